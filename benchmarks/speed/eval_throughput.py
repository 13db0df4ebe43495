"""Evaluation throughput: episodes per second of each method, work shared vs every method on its own.

The harness (``metalm.eval.Harness``) on SmolLM2-135M at the main job's shapes (LoRA r=8 on q/v of
the top 4 layers, 3-way K-shot episodes with 2 queries per class, 2 inner SGD steps at lr 0.1) on
the default split's held-out tasks, in one process, twice: ``shared_work=True`` (the frozen layers
of each episode's support and queries computed once and reused by every adapted method, the
unadapted methods' queries of all episodes scored together) and ``shared_work=False`` (the
reference path: each method on each episode on its own, as before this change). The accuracies
of both are checked equal, episode by episode.

Two measurements per variant: each method alone (``methods=[m]``), and all methods together (the
way ``metalm eval`` runs them), whose per-method share is reported as total / methods. ``meta``
adapts a trained-like initialization (the standard one plus fixed noise: speed does not depend
on the values).

    python benchmarks/speed/eval_throughput.py --episodes 2 --shots 4 --json benchmarks/results/eval_throughput.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from metalm.eval import EvalConfig, Harness, Trained, eval_tasks
from metalm.eval.inits import init_of
from metalm.train import build_model, build_registry, load_train_config, task_lists

METHODS = ["zeroshot", "icl", "finetune", "meta"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="benchmarks/fewshot/main.yaml")
    parser.add_argument("--episodes", type=int, default=2, help="episodes per task")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--ways", type=int, default=3)
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--tasks", help="comma-separated tasks (default: the split's held-out tasks)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = load_train_config(args.config)
    tokenizer, model, selection, learner = build_model(config, torch.device("cpu"))
    registry = build_registry(config)
    _, _, heldout = task_lists(config, registry)
    tasks = eval_tasks(registry, args.tasks.split(",") if args.tasks else heldout)
    base = dataclasses.replace(init_of(learner), lr=None)
    g = torch.Generator().manual_seed(1)
    trained = dataclasses.replace(base, fast={k: v + 0.01 * torch.randn(v.shape, generator=g, dtype=v.dtype)
                                              for k, v in base.fast.items()})
    n_eps = args.episodes * len(tasks)

    def measure(methods: list[str], shared: bool) -> tuple[float, dict]:
        cfg = EvalConfig(shots=[args.shots], episodes=args.episodes, ways=args.ways, queries=args.queries,
                         methods=methods, shared_work=shared)
        rows = [Trained("meta", "meta", trained)] if "meta" in methods else []
        harness = Harness(model, tokenizer, base, cfg, rows, selection.lowest_adapted_layer())
        harness.finetune = base  # the main job's inner loop: no grid search in the timing
        for t in tasks:  # draw (and render) the episodes outside the timing
            harness.episodes(t, args.shots)
        start = time.perf_counter()
        data = harness.measure(tasks)
        return time.perf_counter() - start, data

    rows, out = [], {"episodes": n_eps, "shots": args.shots, "ways": args.ways, "queries": args.queries,
                     "tasks": [t.name for t in tasks], "alone": {}, "together": {}}
    for method in METHODS:
        t_ref, a = measure([method], False)
        t_new, b = measure([method], True)
        assert a == b, f"{method}: accuracies differ between the two paths"
        out["alone"][method] = {"reference_s": t_ref, "shared_s": t_new}
        rows.append((method, n_eps / t_ref, n_eps / t_new))
        print(f"{method:9s} alone: {n_eps / t_ref:.3f} -> {n_eps / t_new:.3f} episodes/s "
              f"({t_ref / t_new:.2f}x), accuracies equal", flush=True)
    t_ref, a = measure(METHODS, False)
    t_new, b = measure(METHODS, True)
    assert a == b, "accuracies differ between the two paths"
    out["together"] = {"reference_s": t_ref, "shared_s": t_new}
    print(f"all {len(METHODS)} methods: {t_ref:.1f} s -> {t_new:.1f} s ({t_ref / t_new:.2f}x), "
          f"{len(METHODS) * n_eps / t_ref:.3f} -> {len(METHODS) * n_eps / t_new:.3f} method-episodes/s", flush=True)
    print("\n| method | reference path (episodes/s) | shared work (episodes/s) | speed-up |\n|---|---|---|---|")
    for method, ref, new in rows:
        print(f"| {method} (alone) | {ref:.3f} | {new:.3f} | {new / ref:.2f}x |")
    print(f"| all four together | {len(METHODS) * n_eps / t_ref:.3f} | {len(METHODS) * n_eps / t_new:.3f} | "
          f"{t_ref / t_new:.2f}x |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
