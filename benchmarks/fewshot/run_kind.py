"""The kind of a trained run folder (meta, mtl, hyper or library): the `metalm eval --methods` name of its
rows, for scripts that evaluate a run beside fine-tuning alone.

    python benchmarks/fewshot/run_kind.py runs/long-hyperlora   # hyper
"""

from __future__ import annotations

import sys
from pathlib import Path

from metalm.run import load_train_config, run_kind

if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: run_kind.py RUN_DIR")
    print(run_kind(load_train_config(Path(sys.argv[1]) / "config.yaml")))
