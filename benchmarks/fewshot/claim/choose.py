"""The claim study's choices on meta-val, as code (benchmarks/fewshot/claim/PLAN.md, written before any
candidate was trained): each candidate's checkpoint, then the row designated per shot count.

Reads each candidate's learning-curve points, `metalm eval` JSONs on the pool split's meta-val tasks
written by `benchmarks/fewshot/claim/curves.sh` as ``benchmarks/results/claim/NAME.step-NNNNNNN.json``
(and ``.final.json`` for the chosen checkpoint); a candidate is named by its run folder
``runs/long-NAME``. Rules:

* a candidate's checkpoint is the step whose best trained row has the highest meta-val macro accuracy
  at 16 shots; a tie (equal to 3 decimals) goes to the later step; the chosen checkpoint is then scored
  at 4 and 16 shots (``NAME.step-N.final.json``: curve points score 16 shots only, PLAN.md 2026-12-06);
* each candidate is compared on the held-out tasks with its best row at each shot count (a tie to 3
  decimals: the row listed first; 1 shot: the 4-shot row);
* per shot count (16, 4), the designated row is the trained row with the highest meta-val macro
  accuracy at that shot count among all candidates' rows at their chosen checkpoints (a tie goes to
  the candidate listed first, in the PLAN's order); 1 shot takes the 4-shot choice (meta-val is not
  scored at 1 shot).

The pilot's rule (FOMAML or Reptile, both at 15% of the schedule, scored in one evaluation on meta-val at 4
shots): the higher macro accuracy of their @ft rows goes on if the paired 95% interval of the
difference excludes zero, else the cheaper per step in the study's cost file (on the pool split,
``benchmarks/results/claim_pool_cost.json``: FOMAML, 7.5 s against Reptile's 7.8; on BIG-bench it was Reptile).

    python benchmarks/fewshot/claim/choose.py pilot benchmarks/results/claim/pilot.json \
        --fomaml meta:fomaml@ft --reptile meta:reptile@ft
    python benchmarks/fewshot/claim/choose.py step runs/long-multitask   # the checkpoint rule alone
    python benchmarks/fewshot/claim/choose.py runs/long-channel_metaicl runs/long-multitask ... \
        --json benchmarks/results/claim_selection.json
    # then compare.sh scores each candidate's compared rows and merge.py writes claim.json with "designated"
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from metalm.errors import MetalmError
from metalm.eval.compare import _labels
from metalm.eval.stats import paired
from metalm.eval.summary import macro_units
from metalm.run import load_train_config, run_kind
from metalm.runtime.files import write_atomic

ROOT = Path(__file__).resolve().parents[3]
CURVES = ROOT / "benchmarks" / "results" / "claim"
COSTS = ROOT / "benchmarks" / "results" / "claim_pool_cost.json"
SHOTS = (16, 4)


def trained_rows(report: dict[str, Any], label: str) -> list[str]:
    """The rows of ``report`` that belong to the run labelled ``label`` (itself and its ``@ft``, ``-cal``,
    ``+icl`` variants), not the baselines."""
    return sorted({r["method"] for r in report["macro"]
                   if r["method"] == label or r["method"].startswith((f"{label}@", f"{label}-", f"{label}+"))})


def macro(report: dict[str, Any], row: str, shots: int) -> float:
    found = [r["accuracy"] for r in report["macro"] if r["method"] == row and r["shots"] == shots]
    if not found:
        raise SystemExit(f"no {row!r} row at {shots} shots in the curve point (evaluate at 4 and 16 shots)")
    return found[0]


def choose_step(points: dict[int, float]) -> int:
    """The step of the highest accuracy; a tie to 3 decimals goes to the later step."""
    best = max(round(v, 3) for v in points.values())
    return max(step for step, v in points.items() if round(v, 3) == best)


def designate(chosen: dict[str, dict[str, dict[int, float]]]) -> dict[str, dict[str, str]]:
    """``{"16"|"4"|"1": {"candidate", "row"}}`` from each candidate's rows at its chosen checkpoint
    (``candidate -> row -> shots -> meta-val macro``, candidates in the PLAN's order)."""
    out = {}
    for k in SHOTS:
        rows = [(c, row, accs[k]) for c, per in chosen.items() for row, accs in per.items()]
        best = max(round(a, 3) for _, _, a in rows)
        c, row, _ = next(x for x in rows if round(x[2], 3) == best)  # a tie: the candidate listed first
        out[str(k)] = {"candidate": c, "row": row}
    out["1"] = dict(out["4"])
    return out


def curve(run: Path, folder: Path = CURVES) -> dict[int, dict[str, Any]]:
    """The curve points of the candidate of ``run`` (``runs/long-NAME``): step -> its eval JSON."""
    name = run.name.removeprefix("long-")
    points = {}
    for path in sorted(folder.glob(f"{name}.step-*.json")):
        match = re.fullmatch(rf"{re.escape(name)}\.step-(\d+)\.json", path.name)
        if match:
            points[int(match.group(1))] = json.loads(path.read_text(encoding="utf-8"))
    if not points:
        raise SystemExit(f"no curve point of {name} in {folder} (run benchmarks/fewshot/claim/curves.sh {run})")
    return points


def final(run: Path, step: int, points: dict[int, dict[str, Any]], label: str, folder: Path = CURVES
          ) -> dict[str, Any]:
    """The chosen checkpoint scored at 4 and 16 shots: ``NAME.step-N.final.json`` (PLAN.md, 2026-12-06: curve
    points score 16 shots only), or the curve point itself where it holds both shot counts."""
    path = folder / f"{run.name.removeprefix('long-')}.step-{step:07d}.final.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    rows = set(trained_rows(points[step], label))
    if {r["shots"] for r in points[step]["macro"] if r["method"] in rows} >= set(SHOTS):
        return points[step]
    raise SystemExit(f"{path} is not written: score the chosen checkpoint at 4 and 16 shots "
                     f"(FINAL={step} bash benchmarks/fewshot/claim/curves.sh {run})")


def chosen_step(run: Path, folder: Path = CURVES) -> int:
    """The checkpoint rule on ``run``'s curve points: the best trained row's 16-shot meta-val macro."""
    config = load_train_config(run / "config.yaml")
    label = _labels([str(run)], [config], [run_kind(config)])[0]  # its rows' name evaluated alone
    points = curve(run, folder)
    best = {}
    for step, rep in sorted(points.items()):
        rows = trained_rows(rep, label)
        if not rows:
            raise SystemExit(f"{run}: the curve point of step {step} has no row of {label!r}")
        best[step] = max(macro(rep, row, 16) for row in rows)
    return choose_step(best)


def best_row(accs: dict[str, dict[int, float]], shots: int) -> str:
    """A candidate's row with the highest meta-val macro at ``shots``; a tie to 3 decimals goes to the row
    listed first (the report's order)."""
    top = max(round(a[shots], 3) for a in accs.values())
    return next(row for row, a in accs.items() if round(a[shots], 3) == top)


def select(runs: list[Path], folder: Path = CURVES) -> dict[str, Any]:
    """The selection record: each candidate's curve (16 shots), chosen step and checkpoint, its rows at that
    checkpoint (4 and 16 shots), the row it is compared with per shot count, and the designated rows."""
    out: dict[str, Any] = {"rule": __doc__.split("Rules:")[1].split("    python")[0].strip(), "candidates": {}}
    chosen: dict[str, dict[str, dict[int, float]]] = {}
    for run in runs:
        config = load_train_config(run / "config.yaml")
        label = _labels([str(run)], [config], [run_kind(config)])[0]
        points = curve(run, folder)
        step = chosen_step(run, folder)
        rep = final(run, step, points, label, folder)
        chosen[str(run)] = {row: {k: macro(rep, row, k) for k in SHOTS} for row in trained_rows(rep, label)}
        compared = {str(k): best_row(chosen[str(run)], k) for k in SHOTS}
        compared["1"] = compared["4"]
        out["candidates"][str(run)] = {
            "label": label, "chosen_step": step, "checkpoint": str(run / "checkpoints" / f"step-{step:07d}"),
            "curve": {str(s): {row: macro(r, row, 16) for row in trained_rows(r, label)}
                      for s, r in sorted(points.items())},
            "rows": chosen[str(run)], "compared": compared}
    out["designated"] = designate(chosen)
    return out


def cheaper_arm(costs: Path = COSTS) -> str:
    """The pilot arm with fewer seconds per training step in the study's cost file (``fomaml``/``reptile``)."""
    rows = json.loads(costs.read_text(encoding="utf-8"))["rows"]
    missing = [arm for arm in ("fomaml", "reptile") if f"{arm}/4" not in rows]
    if missing:
        raise SystemExit(f"{costs} has no {missing[0]}/4 row: run pilot_cost.py first")
    return min(("fomaml", "reptile"), key=lambda arm: rows[f"{arm}/4"]["seconds_mean"])


def pilot(report: dict[str, Any], fomaml: str, reptile: str, shots: int = 4, cheaper: str = "reptile"
          ) -> dict[str, Any]:
    """The pilot's choice from one evaluation holding both rows on the same episodes: ``{"chosen":
    "fomaml"|"reptile", "diff", "ci95", "p", "n"}`` (the difference is FOMAML's minus Reptile's, over
    the macro units: per seed and episode index, the mean over tasks); ``cheaper`` goes on when the
    interval includes zero."""
    try:
        test = paired(macro_units(report, fomaml, shots), macro_units(report, reptile, shots))
    except MetalmError as err:
        raise SystemExit(f"the pilot's report: {err}") from None
    separated = abs(test["diff"]) > test["ci95"]
    chosen = ("fomaml" if test["diff"] > 0 else "reptile") if separated else cheaper
    return {"chosen": chosen, **{k: test[k] for k in ("diff", "ci95", "p", "n")}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["step"]:
        parser = argparse.ArgumentParser(description="the checkpoint rule on one candidate's curve points")
        parser.add_argument("run", type=Path)
        parser.add_argument("--curves", type=Path, default=CURVES)
        args = parser.parse_args(argv[1:])
        print(chosen_step(args.run, args.curves))
        return 0
    if argv[:1] == ["pilot"]:
        parser = argparse.ArgumentParser(description="the pilot's choice: FOMAML or Reptile")
        parser.add_argument("report", type=Path)
        parser.add_argument("--fomaml", required=True, help="FOMAML's row in the report, e.g. meta:fomaml@ft")
        parser.add_argument("--reptile", required=True, help="Reptile's row, e.g. meta:reptile@ft")
        parser.add_argument("--costs", type=Path, default=COSTS, help="seconds per step: the cheaper arm wins a tie")
        args = parser.parse_args(argv[1:])
        print(json.dumps(pilot(json.loads(args.report.read_text(encoding="utf-8")), args.fomaml, args.reptile,
                               cheaper=cheaper_arm(args.costs))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="the candidates' run folders, in the PLAN's order")
    parser.add_argument("--json", type=Path, help="write the selection here")
    parser.add_argument("--curves", type=Path, default=CURVES, help="where the curve points are")
    args = parser.parse_args(argv)
    selection = select(args.runs, args.curves)
    for run, c in selection["candidates"].items():
        print(f"{run}: step {c['chosen_step']} ({', '.join(map(str, c['curve']))} scored)", file=sys.stderr)
    if args.json:
        write_atomic(args.json, json.dumps(selection, indent=1) + "\n")
    print(json.dumps(selection["designated"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
