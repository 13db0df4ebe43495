"""The method study's evidence in one place (benchmarks/RESULTS.md, "The method study").

For every trained run given: its algorithm, steps and meta-val learning curve (the trainer's fixed
meta-val episodes: query loss and token accuracy at each validation); then every row of the
meta-val selection JSONs (macro accuracy on the 6 meta-val tasks, paired difference from the best
baseline there); then each held-out JSON's macro rows, so meta-val and held-out can be read side by
side. Markdown on stdout.

    cd benchmarks/results && python ../fewshot/study_report.py --runs ../../runs/study_metaicl ../../runs/study/* \
        --val study_metaval_4shot.json study_metaval_gradient_4shot.json \
        --heldout eval_study_winner_4shot.json eval_study_gradient_winner_4shot.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from metalm.run import load_train_config


def curve(run: Path) -> str:
    points = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "val_query_loss" in r]
    return ", ".join(f"{r['step']}: {r['val_query_loss']:.3f} / {r['val_query_accuracy']:.3f}" for r in points)


def macro_rows(path: Path) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    paired = {r["method"]: r for r in data["paired"] if r.get("task") == "macro"}
    out = []
    for row in sorted(data["macro"], key=lambda r: -r["accuracy"]):
        p = paired.get(row["method"])
        diff = f"{p['diff']:+.3f} [{p['diff'] - p['ci95']:+.3f}, {p['diff'] + p['ci95']:+.3f}]" if p else "(reference)"
        acc = f"{row['accuracy']:.3f} ± {row['ci95']:.3f}"
        out.append(f"| {path.stem} | {row['method']} | {row['shots']} | {acc} | {diff} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=[])
    parser.add_argument("--val", nargs="*", default=[])
    parser.add_argument("--heldout", nargs="*", default=[])
    args = parser.parse_args()
    print("| run | algorithm | inner loop | outer steps | meta-val curve (step: query loss / token accuracy) |")
    print("|---|---|---|---|---|")
    for run in map(Path, args.runs):
        if not (run / "log.jsonl").exists():
            continue
        config = load_train_config(run / "config.yaml")
        alg = config.algorithm_config()
        inner = alg.inner
        learned = getattr(alg, "learn_lr", "none")
        rate = f"learned {learned.replace('_', '-')} rates from {inner.lr}" if learned != "none" else f"lr {inner.lr}"
        loop = "none (in context)" if config.algorithm["name"] == "metaicl" else \
            f"{inner.optimizer} {rate}, {inner.steps} steps" + ("" if inner.first_order else ", 2nd order") \
            + ("" if getattr(alg, "queries", "plain") == "plain" else "; queries in context")
        steps = sum(1 for _ in (run / "log.jsonl").open())
        print(f"| {run} | {config.algorithm['name']} | {loop} | {steps} | {curve(run)} |")
    for title, paths in (("meta-val tasks (selection)", args.val), ("held-out tasks", args.heldout)):
        paths = [Path(p) for p in paths if Path(p).exists()]
        if paths:
            print(f"\n{title}:\n\n| file | row | shots | macro accuracy | "
                  "paired difference from the best baseline [95% CI] |")
            print("|---|---|---|---|---|")
            for path in paths:
                print("\n".join(macro_rows(path)))


if __name__ == "__main__":
    main()
