"""Pair the rows of two `metalm eval --json` files measured on the same episodes.

The second file's rows (except those both files have) join the first file's, and the merged
per-episode accuracies are summarized again (macro, paired differences from the best baseline,
winner). The episodes are the same when both files were written with the same shots, ways,
queries, episodes, seeds and evaluation seed; this script checks it on every row both files have
(their per-episode accuracies must be equal) and refuses otherwise.

    python benchmarks/fewshot/merge_rows.py benchmarks/results/eval_default_4shot.json \
        benchmarks/results/eval_metaicl_4shot.json [--json MERGED.json]

With ``--json`` the merged report is written (per-episode accuracies, and each row's cost per new task
when both files measured it, ``"episode_cost"``), so `metalm report MERGED.json` draws every row
together, the accuracy/cost Pareto plot included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metalm.eval import format_paired, format_table, format_winner, summarize
from metalm.eval.fewshot import BASELINES
from metalm.eval.summary import measurements


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--json", type=Path, help="write the merged report here")
    parser.add_argument("--shared", help="comma-separated rows that must agree (default: every row both files "
                                         "have); the second file's other rows are renamed ROW:SECOND, e.g. its "
                                         "fine-tuning of another adapter shape")
    args = parser.parse_args(argv)
    first, second = (json.loads(p.read_text(encoding="utf-8")) for p in (args.first, args.second))
    shared = set(first["per_episode"]) & set(second["per_episode"])
    if args.shared:
        shared = {key for key in shared if key.split("|")[0] in args.shared.split(",")}
    if not shared:
        sys.exit("no row in common: cannot check that the episodes are the same")
    for key in sorted(shared):
        if first["per_episode"][key] != second["per_episode"][key]:
            sys.exit(f"{key}: per-episode accuracies differ, so the episodes are not the same")
    label = args.second.stem
    data = {}
    for source, rename in ((first, False), (second, True)):
        for (method, task, shots), accs in measurements(source).items():
            if rename and f"{method}|{task}|{shots}" in shared:
                continue
            name = f"{method}:{label}" if rename else method
            data[(name, task, shots)] = accs
    seeds = first["seeds"]["seeds"]
    report = summarize(data, first["tasks"], sorted({k for _, _, k in data}), chance=first["chance"],
                       majority=first["majority"], seeds=seeds, baselines=list(BASELINES))
    if args.json:
        report["tasks"] = first["tasks"]
        shared_rows = {key.split("|")[0] for key in shared}
        theirs = {f"{m}:{label}": c for m, c in second.get("episode_cost", {}).items() if m not in shared_rows}
        costs = {**first.get("episode_cost", {}), **theirs}
        if costs:
            report["episode_cost"] = dict(sorted(costs.items()))
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"{len(shared)} shared (method, task, shots) rows agree episode by episode\n")
    print(format_table(report))
    print("\n" + format_paired(report))
    print("\n" + format_winner(report))
    for row in report["seeds"]["summary"]:
        if row["method"].endswith(label):
            per = [r["accuracy"] for r in report["seeds"]["per_seed"] if r["method"] == row["method"]]
            print(f"\n{row['method']} per seed: " + ", ".join(f"{a:.3f}" for a in per))


if __name__ == "__main__":
    main()
