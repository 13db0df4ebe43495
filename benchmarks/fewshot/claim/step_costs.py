"""The claim study's training cost as it ran, against the sizing's: seconds and tokens per step read off each
candidate's committed log (``benchmarks/runs/long-NAME/log.jsonl``: every step logs its ``seconds`` and
``tokens``), beside the per-step cost PLAN.md sized the study with (``claim_pool_cost.json``, ``NAME/4``:
a few steps of one process alone), and the CPU-hours the steps left would take at the observed rate.

    python benchmarks/fewshot/claim/step_costs.py --json benchmarks/results/claim_step_costs.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from metalm.runtime.files import json_lines, write_atomic  # noqa: E402

STATE = ROOT / "benchmarks" / "runs"
COSTS = ROOT / "benchmarks" / "results" / "claim_pool_cost.json"
CONFIGS = ROOT / "benchmarks" / "fewshot" / "claim"
#: The study's candidates (PLAN.md's order; the pilot's other arm, Reptile, goes no further than its 45 steps)
CANDIDATES = ("channel_metaicl", "metaicl_direct", "multitask", "fomaml", "fomaml_icl", "hyperlora", "lora_library")


def observed(log: Path) -> dict[str, Any] | None:
    """Per-step seconds (mean, median, max) and mean tokens of a run's log; ``None`` without logged steps."""
    steps = {r["step"]: r for r in json_lines(log) if "step" in r and "seconds" in r}  # a resumed step: its last
    if not steps:
        return None
    seconds = [r["seconds"] for r in steps.values()]
    tokens = [sum(r.get("tokens") or [0]) for r in steps.values()]
    return {"steps": len(steps), "last": max(steps), "seconds_mean": statistics.fmean(seconds),
            "seconds_median": statistics.median(seconds), "seconds_max": max(seconds),
            "tokens_mean": statistics.fmean(tokens)}


def table(state: Path = STATE, costs: Path = COSTS, configs: Path = CONFIGS) -> dict[str, Any]:
    """Each candidate (:data:`CANDIDATES`) with a committed log: :func:`observed`, the sized ``seconds`` per
    step, their ratio, and ``hours_left`` (its schedule's steps not yet logged at the observed mean)."""
    from metalm.run import load_train_config

    sized = json.loads(costs.read_text(encoding="utf-8"))["rows"] if costs.is_file() else {}
    out = {}
    for name in CANDIDATES:
        folder = state / f"long-{name}"
        seen = observed(folder / "log.jsonl") if (folder / "log.jsonl").is_file() else None
        config = configs / f"{name}.yaml"
        if seen is None or not config.is_file():
            continue
        row = sized.get(f"{name}/4", {})
        total = load_train_config(config).max_steps
        seen["max_steps"] = total
        seen["sized_seconds"] = row.get("seconds_mean")
        seen["ratio"] = seen["seconds_mean"] / row["seconds_mean"] if row.get("seconds_mean") else None
        seen["hours_left"] = max(0, total - seen["last"]) * seen["seconds_mean"] / 3600
        out[name] = seen
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = table()
    print("| candidate | steps logged | s / step (mean, median, max) | tokens / step | sized s / step | ratio | "
          "CPU-hours left |\n|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
        sized = f"{r['sized_seconds']:.1f}" if r["sized_seconds"] else "-"
        print(f"| {name} | {r['steps']} of {r['max_steps']} | {r['seconds_mean']:.1f}, {r['seconds_median']:.1f}, "
              f"{r['seconds_max']:.0f} | {r['tokens_mean']:,.0f} | {sized} | {ratio} | {r['hours_left']:.2f} |")
    if args.json:
        write_atomic(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
