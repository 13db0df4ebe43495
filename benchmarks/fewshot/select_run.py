"""Pick the method study's winner on the meta-val tasks: the trained run whose row has the highest
macro accuracy in a `metalm eval --tasks <meta-val tasks> --run-dir A --run-dir B ...` JSON.

Rows are matched to runs with the labels `metalm eval` gave them (`metalm.eval.compare`), so the
runs must be listed in the same order as in that command. Prints the winning run folder (stdout)
and every trained row's meta-val accuracy with its paired difference from the best baseline
(stderr). Held-out tasks play no part in the choice.

    python benchmarks/fewshot/select_run.py benchmarks/results/study_metaval_4shot.json runs/a runs/b
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from metalm.eval.compare import _labels
from metalm.run import load_train_config, run_kind


def main() -> None:
    result = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    runs = sys.argv[2:]
    configs = [load_train_config(Path(r) / "config.yaml") for r in runs]
    labels = _labels(runs, configs, [run_kind(c) for c in configs])
    macro = {row["method"]: row["accuracy"] for row in result["macro"]}
    paired = {row["method"]: row for row in result["paired"] if row.get("task") == "macro"}
    missing = [label for label in labels if label not in macro]
    if missing:
        sys.exit(f"{sys.argv[1]} has no row {missing[0]!r}: were the runs listed in the evaluation's order?")
    print(f"meta-val macro accuracy, paired difference from {', '.join(result['reference'].values())}:",
          file=sys.stderr)
    for run, label in zip(runs, labels, strict=True):
        p = paired.get(label, {})
        diff = f"{p['diff']:+.3f} ± {p['ci95']:.3f} (p {p['p']:.2g})" if p else ""
        print(f"  {run}: {label} {macro[label]:.3f} {diff}", file=sys.stderr)
    best = max(zip(runs, labels, strict=True), key=lambda rl: macro[rl[1]])  # ties: the first listed
    print(best[0])


if __name__ == "__main__":
    main()
