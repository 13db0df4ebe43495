"""Pick the method study's winner on the meta-val tasks: the trained row with the highest macro
accuracy in one or more `metalm eval --tasks <meta-val tasks> --run-dir A --run-dir B ...` JSONs.

Rows are matched to runs with the labels `metalm eval` gave them (`metalm.eval.compare`), so each
JSON's runs must be listed in the same order as in its command. A run's calibrated row
(`<row>-cal`, from `calibrate_trained=true`) and its in-context rows (`<row>+icl`, `<row>+icl-cal`,
from `in_context_trained=true`) are candidates of their own. Several rounds (groups
separated by `--`) are compared only if they scored the same meta-val episodes: their baseline rows
must agree episode by episode. Prints the winning run folder (stdout) and every trained row's
meta-val accuracy with its paired difference from the best baseline (stderr). Held-out tasks play no
part in the choice.

    python benchmarks/fewshot/select_run.py benchmarks/results/study_metaval_4shot.json runs/a runs/b
    python benchmarks/fewshot/select_run.py round1.json runs/a runs/b -- round2.json runs/c
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from metalm.eval.compare import _labels
from metalm.run import load_train_config, run_kind


def candidates(path: str, runs: list[str]) -> tuple[dict, list[tuple[str, str, float, str]]]:
    """``(result, [(run, row, meta-val macro, paired difference in words)])`` of one round."""
    result = json.loads(Path(path).read_text(encoding="utf-8"))
    configs = [load_train_config(Path(r) / "config.yaml") for r in runs]
    labels = _labels(runs, configs, [run_kind(c) for c in configs])
    macro = {row["method"]: row["accuracy"] for row in result["macro"]}
    paired = {row["method"]: row for row in result["paired"] if row.get("task") == "macro"}
    missing = [label for label in labels if label not in macro]
    if missing:
        sys.exit(f"{path} has no row {missing[0]!r}: were the runs listed in the evaluation's order?")
    out = []
    for run, label in zip(runs, labels, strict=True):
        for row in (label, f"{label}-cal", f"{label}+icl", f"{label}+icl-cal"):
            if row in macro:
                p = paired.get(row, {})
                diff = f"{p['diff']:+.3f} ± {p['ci95']:.3f} (p {p['p']:.2g})" if p else ""
                out.append((run, row, macro[row], diff))
    return result, out


def main() -> None:
    groups: list[list[str]] = [[]]
    for arg in sys.argv[1:]:
        if arg == "--":
            groups.append([])
        else:
            groups[-1].append(arg)
    rounds = [candidates(g[0], g[1:]) for g in groups if g]
    first = rounds[0][0]
    for (result, _), group in zip(rounds[1:], groups[1:], strict=True):
        for key, accs in first["per_episode"].items():
            if not key.startswith(("icl|", "icl-cal|")):
                continue
            if result["per_episode"].get(key) != accs:
                sys.exit(f"{group[0]} and {groups[0][0]} differ on {key}: not the same meta-val episodes")
    print(f"meta-val macro accuracy, paired difference from {', '.join(first['reference'].values())}:",
          file=sys.stderr)
    rows = [c for _, found in rounds for c in found]
    for run, row, acc, diff in rows:
        print(f"  {run}: {row} {acc:.3f} {diff}", file=sys.stderr)
    best = max(rows, key=lambda c: c[2])  # ties: the first listed
    print(f"selected: {best[0]} ({best[1]})", file=sys.stderr)
    print(best[0])


if __name__ == "__main__":
    main()
