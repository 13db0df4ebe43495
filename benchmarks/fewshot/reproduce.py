"""Re-measure a sample of an evaluation's blocks with today's code and compare them, episode by
episode, with what was recorded: the check that a refactoring left the figures unchanged.

An evaluation's blocks (task, shot count, seed) are read from its report (``per_episode``) or from
its journal (``OUT.json.partial.jsonl``, while it is still running or stopped); ``--sample`` of them
(seeded) are measured again with the same protocol and fine-tuning's recorded budget (its grid is
narrowed to that one point, so its choice is the recorded one without searching the grid again).
Every recorded row that can be measured again (the baselines; trained rows with their ``--run-dir``)
must come back equal, per episode; the rows left out are listed.

    python benchmarks/fewshot/reproduce.py benchmarks/results/bench_baselines.json.partial.jsonl \
        --protocol bench --model smollm2-135m --sample 2 --json benchmarks/results/reproduce_bench.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path


def recorded_blocks(path: Path) -> tuple[dict[str, dict[str, list[float]]], dict | None]:
    """``{task/shots/seed: {row: per-episode accuracies}}`` and fine-tuning's recorded choice."""
    if path.name.endswith(".partial.jsonl"):
        from metalm.eval.journal import Journal, journal_paths

        # read only: the evaluation writing it may still be running; with its shards' journals (--shard)
        _, others = journal_paths(path.with_name(path.name.removesuffix(".partial.jsonl")))
        journal = Journal.read(path, others)
        return journal.blocks, journal.finetune
    from metalm.eval.summary import measurements

    report = json.loads(path.read_text(encoding="utf-8"))
    blocks = {}
    for (row, task, shots), by_seed in measurements(report).items():
        for seed, accs in enumerate(by_seed):
            blocks.setdefault(f"{task}/{shots}/{seed}", {})[row] = accs
    return blocks, report.get("finetune")


def main() -> int:
    from metalm.data import TaskRegistry, packaged_tasks_dir, task_path
    from metalm.eval import BASELINES, EvalConfig
    from metalm.eval.protocol import load_protocol, merge
    from metalm.eval.recipe import evaluate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recorded", help="an eval.json or its .partial.jsonl journal")
    ap.add_argument("--protocol", required=True)
    ap.add_argument("--model", help="the base model (baselines); or --run-dir")
    ap.add_argument("--run-dir", action="append", default=[])
    ap.add_argument("--sample", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blocks", help="comma-separated blocks (task/shots/seed) instead of a seeded sample")
    ap.add_argument("--json")
    args = ap.parse_args()
    blocks, finetune = recorded_blocks(Path(args.recorded))
    chosen = args.blocks.split(",") if args.blocks else \
        sorted(random.Random(args.seed).sample(sorted(blocks), min(args.sample, len(blocks))))
    missing = [b for b in chosen if b not in blocks]
    if missing:
        ap.error(f"{args.recorded} has no block {missing[0]!r}")
    registry = TaskRegistry.from_dirs(packaged_tasks_dir(), *task_path())
    protocol = load_protocol(args.protocol, registry)
    base = merge(protocol, {})
    results = []
    for key in chosen:
        task, shots, seed = key.rsplit("/", 2)
        methods = [m for m in base.get("methods", EvalConfig().methods) if m in blocks[key]
                   and (args.run_dir or m in BASELINES)]  # without --run-dir: the baselines' rows
        rows = {r: accs for r, accs in blocks[key].items() if r in methods}
        if not rows:
            ap.error(f"block {key}: no recorded row can be measured again here (give the runs with --run-dir)")
        fields = {**base, "shots": [int(shots)], "seeds": 1, "seed": base.get("seed", EvalConfig().seed) + int(seed),
                  "methods": methods}
        if finetune is not None:  # the recorded budget: a grid of one point
            rates = "finetune_lrs" if finetune["optimizer"] == "sgd" else "finetune_adam_lrs"
            fields.update({"finetune_optimizers": [finetune["optimizer"]], "finetune_steps": [finetune["steps"]],
                           rates: [finetune["lr"]]})
        config = EvalConfig(**{k: v for k, v in fields.items() if k in EvalConfig.__dataclass_fields__})
        start = time.perf_counter()
        report = evaluate(config, runs=args.run_dir, model=None if args.run_dir else args.model,
                          split=protocol.split, tasks=[task], protocol=None, progress=False, log=None)
        again = {k.split("|")[0]: v[0] for k, v in report["per_episode"].items()}
        same = {row: again.get(row) == accs for row, accs in rows.items()}
        results.append({"block": key, "seconds": round(time.perf_counter() - start, 1), "rows": same,
                        "not_measured": sorted(set(blocks[key]) - set(rows)), "equal": all(same.values())})
        print(key, "equal" if all(same.values()) else f"DIFFERENT: {[r for r, s in same.items() if not s]}",
              flush=True)
    out = {"recorded": args.recorded, "protocol": args.protocol, "blocks": results,
           "all_equal": all(r["equal"] for r in results)}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0 if out["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
