"""Fine-tuning's budget as the pool benchmark's baseline job chose it on meta-val, as `metalm eval` key=value
overrides (a grid of that one point), so the claim study's curve points adapt their @ft rows with the
baselines' budget.

    python benchmarks/fewshot/claim/ft_budget.py   # finetune_optimizers=[sgd] finetune_lrs=[0.3] ...
    python benchmarks/fewshot/claim/ft_budget.py benchmarks/results/bench_baselines.json   # another table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BASELINES = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "bench_pool_baselines.json"


def budget(done: Path = BASELINES) -> list[str]:
    """The budget from the finished table, else from its journal (the choice is its first block)."""
    journal = done.with_name(done.name + ".partial.jsonl")
    if done.is_file():
        lines = [json.loads(done.read_text(encoding="utf-8"))]
    elif journal.is_file():
        lines = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise SystemExit(f"neither {done} nor {journal}: run benchmarks/fewshot/bench_baselines.sh first")
    ft = next((line["finetune"] for line in lines if "finetune" in line), None)
    if ft is None:
        raise SystemExit(f"the baseline job has not chosen fine-tuning's budget yet ({journal})")
    lr_key = "finetune_lrs" if ft["optimizer"] == "sgd" else "finetune_adam_lrs"
    return [f"finetune_optimizers=[{ft['optimizer']}]", f"{lr_key}=[{ft['lr']}]", f"finetune_steps=[{ft['steps']}]"]


if __name__ == "__main__":
    print(" ".join(budget(Path(sys.argv[1])) if len(sys.argv) > 1 else budget()))
