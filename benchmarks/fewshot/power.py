"""Evaluation power: the minimum detectable macro difference for a number of episodes, from a study.

Reads a ``metalm eval --json`` report, takes each method's paired differences from the reference
(per macro unit: one seed and episode index, the mean over tasks), and prints the standard deviation
of those differences and the smallest true difference that a paired two-sided t-test at 5% detects
with 80% power with ``n`` units, for the study's own ``n`` and for the units of other settings
(``--units 10,30,50``: e.g. 10 = the defaults' 10 episodes x 1 seed).

    python benchmarks/fewshot/power.py benchmarks/results/eval_default_4shot.json --units 10,20,30
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

from metalm.eval.stats import episodes_for, t_quantile
from metalm.eval.summary import macro_units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report")
    parser.add_argument("--units", default="10,20,30", help="numbers of macro units to report the MDE for")
    parser.add_argument("--effect", type=float, default=0.05, help="difference to find the units needed for")
    args = parser.parse_args()
    with open(args.report, encoding="utf-8") as fh:
        report = json.load(fh)
    units = [int(u) for u in args.units.split(",")]
    print("| method | reference | shots | sd of unit differences | " +
          " | ".join(f"MDE at {n} units" for n in units) + f" | units to detect {args.effect:g} |")
    print("|---|---|---|---|" + "---|" * (len(units) + 1))
    for pair in (p for p in report["paired"] if p["task"] == "macro"):
        diffs = [a - b for a, b in zip(macro_units(report, pair["method"], pair["shots"]),
                                       macro_units(report, pair["reference"], pair["shots"]), strict=True)]
        sd = statistics.stdev(diffs)
        mdes = [(t_quantile(0.975, n - 1) + t_quantile(0.8, n - 1)) * sd / math.sqrt(n) for n in units]
        need = episodes_for(args.effect, sd) if sd > 0 else 2
        print(f"| {pair['method']} | {pair['reference']} | {pair['shots']} | {sd:.3f} | " +
              " | ".join(f"{m:.3f}" for m in mdes) + f" | {need} |")


if __name__ == "__main__":
    main()
