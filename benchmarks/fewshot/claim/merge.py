"""The claim study's comparison table: the baseline table and each candidate's compared row, on the same
episodes, into ``benchmarks/results/claim.json`` (PLAN.md, 2026-12-06).

Reads the baseline table (``bench_pool_baselines.json``), the selection (``claim_selection.json``: each
candidate's ``compared`` row per shot count and the ``designated`` rows, written before held-out scoring) and
``compare.sh``'s reports (``claim/compare/NAME.SHOTS.json``). Each candidate becomes one row named after it
(``multitask``, ``channel_metaicl`` ...): at each shot count the accuracies of its compared row there (which
row: ``compared``). The episodes are checked to be the baseline table's: every report's ``zeroshot`` row must
equal the table's episode by episode, and the tasks and seeds must be the same; anything else is refused.
The report is :func:`metalm.eval.summarize`'s (macro, paired differences from the best baseline on the
same units, per-episode accuracies) plus ``compared``, ``designated`` (the designated candidate per shot
count), ``per_type`` (:func:`metalm.eval.summary.grouped`), ``episode_cost`` (baselines and candidates) and
``target`` (16 shots: the designated row at least the best baseline + 0.05, its paired interval above zero).

    python benchmarks/fewshot/claim/merge.py --json benchmarks/results/claim.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "benchmarks" / "results"
CHECK = "zeroshot"  # the row scored beside each candidate's: equal to the table's, episode by episode
MARGIN = 0.05  # the target: the designated row >= the best baseline + MARGIN at 16 shots


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SystemExit(f"{path} is not written (run benchmarks/fewshot/claim/compare.sh)")
    return json.loads(path.read_text(encoding="utf-8"))


def merge(baselines: dict[str, Any], selection: dict[str, Any], reports: dict[tuple[str, int], dict[str, Any]],
          types: dict[str, str] | None = None) -> dict[str, Any]:
    """The comparison report (module doc). ``reports``: (candidate name, shots) -> its compare report."""
    from metalm.eval import summarize
    from metalm.eval.fewshot import BASELINES
    from metalm.eval.summary import grouped, measurements

    tasks, seeds = baselines["tasks"], baselines["seeds"]["seeds"]
    data = measurements(baselines)
    shots = sorted({k for _, _, k in data})
    compared: dict[str, dict[str, str]] = {}
    costs = dict(baselines.get("episode_cost") or {})
    for run, c in selection["candidates"].items():
        name = Path(run).name.removeprefix("long-")
        compared[name] = {}
        for k in shots:
            rep, row = reports.get((name, k)), c["compared"][str(k)]
            where = f"{name} at {k} shots"
            if rep is None:
                raise SystemExit(f"{where}: no report (run benchmarks/fewshot/claim/compare.sh)")
            if rep["tasks"] != tasks or rep["seeds"]["seeds"] != seeds:
                raise SystemExit(f"{where}: its tasks or seeds differ from the baseline table's")
            for task in tasks:
                mine, theirs = rep["per_episode"].get(f"{CHECK}|{task}|{k}"), data.get((CHECK, task, k))
                if mine is None or mine != theirs:
                    raise SystemExit(f"{where}: {CHECK} on {task} differs from the baseline table's, episode by "
                                     "episode: not the same episodes")
                if f"{row}|{task}|{k}" not in rep["per_episode"]:
                    raise SystemExit(f"{where}: no {row!r} row on {task}")
                data[(name, task, k)] = rep["per_episode"][f"{row}|{task}|{k}"]
            compared[name][str(k)] = row
            cost = (rep.get("episode_cost") or {}).get(row, {}).get(str(k))
            if cost is not None:
                costs.setdefault(name, {})[str(k)] = cost
    report = summarize(data, tasks, shots, chance=baselines["chance"], majority=baselines["majority"], seeds=seeds,
                       baselines=list(BASELINES))
    report["tasks"] = tasks
    report["compared"] = compared
    report["designated"] = {k: Path(d["candidate"]).name.removeprefix("long-")
                            for k, d in selection["designated"].items()}
    if costs:
        report["episode_cost"] = dict(sorted(costs.items()))
    if types is not None:
        report["per_type"] = grouped(report, types)
    report["target"] = target(report)
    return report


def target(report: dict[str, Any], shots: int = 16) -> dict[str, Any]:
    """Whether the designated row at ``shots`` is at least the best baseline + :data:`MARGIN` with its paired 95%
    interval above zero (the issue's target), with the figures it reads."""
    row, ref = report["designated"][str(shots)], report["reference"][str(shots)]
    (pair,) = [p for p in report["paired"] if p["task"] == "macro" and p["shots"] == shots and p["method"] == row]
    return {"shots": shots, "designated": row, "reference": ref, "diff": pair["diff"], "ci95": pair["ci95"],
            "margin": MARGIN, "met": bool(pair["diff"] >= MARGIN and pair["diff"] - pair["ci95"] > 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baselines", type=Path, default=RESULTS / "bench_pool_baselines.json")
    parser.add_argument("--selection", type=Path, default=RESULTS / "claim_selection.json")
    parser.add_argument("--reports", type=Path, default=RESULTS / "claim" / "compare", help="compare.sh's folder")
    parser.add_argument("--json", type=Path, help="write the comparison here")
    args = parser.parse_args(argv)
    from metalm.eval import format_paired, format_table, format_winner
    from metalm.eval.summary import format_grouped
    from metalm.runtime.files import write_atomic

    sys.path.insert(0, str(ROOT / "benchmarks" / "fewshot"))
    from baseline_table import task_types

    baselines, selection = _load(args.baselines), _load(args.selection)
    reports = {}
    for path in sorted(args.reports.glob("*.json")):
        name, k = path.stem.rsplit(".", 1)
        reports[(name, int(k))] = _load(path)
    report = merge(baselines, selection, reports, task_types(baselines["tasks"]))
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=1) + "\n")
    print(format_table(report) + "\n\n" + format_winner(report) + "\n\n" + format_paired(report) + "\n")
    print(format_grouped(report["per_type"]) + "\n")
    t = report["target"]
    print(f"target at {t['shots']} shots: {t['designated']} vs {t['reference']}: {t['diff']:+.3f} "
          f"[{t['diff'] - t['ci95']:+.3f}, {t['diff'] + t['ci95']:+.3f}]: {'met' if t['met'] else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
