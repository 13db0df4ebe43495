"""Padding bounded: the bench protocol's rows on long, uneven inputs, every batch padded to its longest row
vs rows grouped by length so a group's padding stays within ``PAD_WASTE`` of its real tokens.

Two places pad: the scoring chunks (queries, in-context rows with their demonstrations, channel rows)
and fine-tuning's support batch (``metalm.losses.split_by_length``: the loss summed over length groups,
weighted by their target tokens). The harness (``metalm.eval.Harness``) on SmolLM2-135M with the bench
protocol's shapes (3-way episodes, 2 queries per class, in-context rows at 8,192 positions) on named
held-out tasks of the bench split, in one process, twice on the same episodes: ``PAD_WASTE`` = infinity
(one group: the harness before this change) and the default (``metalm.losses.PAD_WASTE``). Per-episode
accuracies are compared (the groups differ, so float rounding may move a near tie: the episodes that
differ are counted). Fine-tuning runs at the bench protocol's chosen budget (SGD lr 0.3, 10 steps).

    OMP_NUM_THREADS=1 python benchmarks/speed/padding.py --tasks multiemo.reviews_text_es,logical_args \
        --shots 1 --episodes 2 --json benchmarks/results/padding_speed.json
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from jsonout import add_json_argument, write_json  # same directory

import metalm.losses as losses
from metalm.eval import EvalConfig, Harness
from metalm.eval.fewshot import FinetuneChoice
from metalm.eval.inits import init_from_values
from metalm.train import build_model, build_registry, load_train_config


def measure(model, tokenizer, base, selection, task, shots: int, args: argparse.Namespace,  # noqa: ANN001
            finetune: FinetuneChoice) -> dict:
    """One task at one shot count, both ways on the same episodes: seconds, fine-tuning's forward tokens
    per adaptation, and the per-episode accuracies that differ."""
    cfg = EvalConfig(shots=[shots], episodes=args.episodes, ways=3, queries=2, methods=args.methods.split(","),
                     max_length=args.max_length)
    harness = Harness(model, tokenizer, base, cfg, [], selection.lowest_adapted_layer())
    episodes = harness.episodes(task, shots)
    row_set = list(harness.rows(finetune).values())
    default, figures = losses.PAD_WASTE, []
    try:
        for waste in (math.inf, default):
            losses.PAD_WASTE = waste
            start = time.perf_counter()
            block = harness.block(row_set, episodes)
            tokens = [t for _, t in block.cost.get("finetune", [])]
            figures.append((time.perf_counter() - start, block.accuracy, sum(tokens) / max(len(tokens), 1)))
    finally:
        losses.PAD_WASTE = default
    (t_old, a_old, tok_old), (t_new, a_new, tok_new) = figures
    differ = sum(x != y for r in a_old for x, y in zip(a_old[r], a_new[r], strict=True))
    total = sum(len(v) for v in a_new.values())
    print(f"{task.name} at {shots} shots, {args.episodes} episodes: {t_old:.1f} s -> {t_new:.1f} s "
          f"({t_old / t_new:.2f}x); fine-tuning's forward tokens {tok_old:.0f} -> {tok_new:.0f}; "
          f"per-episode accuracies differing: {differ} of {total}", flush=True)
    return {"task": task.name, "shots": shots, "episodes": args.episodes, "padded_s": round(t_old, 2),
            "grouped_s": round(t_new, 2), "speedup": round(t_old / t_new, 2), "finetune_tokens_padded": tok_old,
            "finetune_tokens_grouped": tok_new, "episode_rows_differing": differ, "episode_rows": total}


def training_padding(config, episodes: int) -> None:  # noqa: ANN001
    """The share of padding in meta-training's support and query batches (module doc)."""
    from metalm.data import EpisodeSampler
    from metalm.data.collate import CollateConfig, tensorize
    from metalm.errors import BatchError
    from metalm.train import task_lists

    registry = build_registry(config)
    tokenizer = build_model(config, torch.device("cpu"))[0]
    train = task_lists(config, registry)[0]
    for queries, length in (("plain", config.collate.max_length), ("channel", 2048)):
        sampler = EpisodeSampler([registry[n] for n in train], config.sampler, seed=0)
        real = padded = skipped = 0
        for _ in range(episodes):
            try:
                ep = tensorize(sampler.sample(), tokenizer, CollateConfig(max_length=length), queries)
            except BatchError:
                skipped += 1
                continue
            for batch in (ep.support, ep.query):
                real += int(batch["attention_mask"].sum())
                padded += batch["attention_mask"].numel()
        print(f"{queries} rows at {length} positions: {real:,} real tokens in {padded:,} "
              f"({1 - real / padded:.0%} padding; {skipped} of {episodes} episodes skipped)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="benchmarks/fewshot/fomaml.yaml", help="the model and adapter shapes")
    parser.add_argument("--tasks", default="multiemo.reviews_text_es,logical_args")
    parser.add_argument("--shots", default="1", help="comma-separated shot counts")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--methods", default="zeroshot,icl,icl-cal,icl-channel,finetune")
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--training", type=int, help="print meta-training's padding over this many episodes")
    add_json_argument(parser)
    args = parser.parse_args()
    config = load_train_config(args.config, {"split": "bench"})
    if args.training:
        training_padding(config, args.training)
        return
    tokenizer, model, selection, learner = build_model(config, torch.device("cpu"))
    registry = build_registry(config)
    base = init_from_values(learner, {k: v.detach().clone() for k, v in learner.meta_parameters().items()},
                            trained=False)
    finetune = FinetuneChoice(base.with_budget("sgd", 0.3, 10), [])
    default = losses.PAD_WASTE
    warm = Harness(model, tokenizer, base, EvalConfig(shots=[1], episodes=1, methods=["zeroshot"]), [],
                   selection.lowest_adapted_layer())
    warm.block(list(warm.rows().values()), warm.episodes(registry[args.tasks.split(",")[0]], 1))
    rows = []
    for name in args.tasks.split(","):
        for shots in map(int, args.shots.split(",")):
            rows.append(measure(model, tokenizer, base, selection, registry[name], shots, args, finetune))
    print("\n| task | shots | padded to the longest (s) | grouped by length (s) | speed-up | fine-tuning tokens | "
          "episode rows differing |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['shots']} | {r['padded_s']} | {r['grouped_s']} | {r['speedup']}x | "
              f"{r['finetune_tokens_padded']:,.0f} -> {r['finetune_tokens_grouped']:,.0f} | "
              f"{r['episode_rows_differing']} of {r['episode_rows']} |")
    write_json(args.json, rows, pad_waste=default, pad_slack=losses.PAD_SLACK)


if __name__ == "__main__":
    main()
