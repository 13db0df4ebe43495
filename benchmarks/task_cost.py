"""What one meta-training episode of each task costs, at a run config's shapes.

For every task of the registry (the shipped ones by default): the tensor shapes of its episodes as
the trainer builds them (support and query rows, padded width, tokens, real tokens), and with
``--time`` the seconds of one meta-gradient (the config's algorithm, median of ``--repeats``)
on a single episode, all in one process so the tasks are compared under the same conditions.
Explains the per-task cost the trainer logs (``tasks``/``tokens`` in ``log.jsonl``, the report's
cost table): at a fixed N-way K-shot shape a task costs what its rows x padded width cost.

    python benchmarks/task_cost.py benchmarks/fewshot/fomaml.yaml --time \
        --json benchmarks/results/task_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from metalm.data import EpisodeSampler, tensorize
from metalm.run import build_model, build_registry, load_train_config


def shapes(episode) -> dict[str, int]:  # noqa: ANN001 - a tokenized Episode
    s, q = episode.support["input_ids"], episode.query["input_ids"]
    real = int(episode.support["attention_mask"].sum() + episode.query["attention_mask"].sum())
    return {"support_rows": s.shape[0], "query_rows": q.shape[0], "support_width": s.shape[1],
            "query_width": q.shape[1], "tokens": int(s.numel() + q.numel()), "real_tokens": real}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a run config (its model, sampler, collate and algorithm)")
    ap.add_argument("--tasks", help="comma-separated task names (default: every task of the registry)")
    ap.add_argument("--episodes", type=int, default=4, help="episodes per task for the shapes")
    ap.add_argument("--time", action="store_true", help="also time one meta-gradient per task")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    config = load_train_config(args.config)
    registry = build_registry(config)
    names = args.tasks.split(",") if args.tasks else registry.names()
    tokenizer, model, _, learner = build_model(config, torch.device("cpu"))
    rows = []
    for name in names:
        task = registry[name]
        sampler = EpisodeSampler([task], config.sampler, seed=config.seed)
        eps = [tensorize(sampler.sample(), tokenizer, config.collate, learner.queries)
               for _ in range(args.episodes)]
        per = [shapes(e) for e in eps]
        row = {"task": name, "type": task.spec.type,
               **{k: statistics.mean(p[k] for p in per) for k in per[0]}}
        if args.time:
            learner.meta_gradients(eps[:1])  # warm-up (allocations of these shapes)
            seconds = []
            for _ in range(args.repeats):
                for p in learner.meta_parameters().values():
                    p.grad = None
                start = time.perf_counter()
                learner.meta_gradients(eps[:1])
                seconds.append(time.perf_counter() - start)
            row["seconds"] = statistics.median(seconds)
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows.sort(key=lambda r: r["tokens"])
    print("\n| task | type | support rows x width | query rows x width | tokens | real tokens |"
          + (" s per meta-gradient |" if args.time else ""))
    print("|---|---|---|---|---|---|" + ("---|" if args.time else ""))
    for r in rows:
        print(f"| {r['task']} | {r['type']} | {r['support_rows']:.0f} x {r['support_width']:.0f} | "
              f"{r['query_rows']:.0f} x {r['query_width']:.0f} | {r['tokens']:.0f} | {r['real_tokens']:.0f} |"
              + (f" {r['seconds']:.2f} |" if args.time else ""))
    if args.json:
        args.json.write_text(json.dumps({"config": str(args.config), "episodes": args.episodes, "tasks": rows},
                                        indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
