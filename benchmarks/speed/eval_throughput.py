"""Evaluation throughput: episodes per second of each method, work shared vs every method on its own.

The harness (``metalm.eval.Harness``) on SmolLM2-135M at the FOMAML config's shapes (LoRA r=8 on q/v of
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

``--before`` measures the harness as it was before this change (commit 85d27b3, one method at a
time, each episode on its own) in a separate process on the same episodes, for the "today"
column; its per-episode accuracies are compared with the new ones:

    git worktree add /tmp/metalm-before 85d27b3
    PYTHONPATH=/tmp/metalm-before python benchmarks/speed/eval_throughput.py --before --json /tmp/before.json
    python benchmarks/speed/eval_throughput.py --compare /tmp/before.json --json benchmarks/results/eval_throughput.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from metalm.train import build_model, build_registry, load_train_config, task_lists

METHODS = ["zeroshot", "icl", "finetune", "meta"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="benchmarks/fewshot/fomaml.yaml")
    parser.add_argument("--episodes", type=int, default=2, help="episodes per task")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--ways", type=int, default=3)
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--tasks", help="comma-separated tasks (default: the split's held-out tasks)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated rows, e.g. icl,icl-cal,icl-channel for the shared demonstrations")
    parser.add_argument("--max-length", type=int, default=256, help="positions per scored row (EvalConfig)")
    parser.add_argument("--split", help="whose held-out tasks (default: the config's split)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--before", action="store_true", help="measure the pre-change harness (PYTHONPATH)")
    parser.add_argument("--compare", help="the --before JSON to compare with")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = load_train_config(args.config, {"split": args.split} if args.split else None)
    tokenizer, model, selection, learner = build_model(config, torch.device("cpu"))
    registry = build_registry(config)
    _, _, heldout = task_lists(config, registry)
    tasks = [registry[n] for n in (args.tasks.split(",") if args.tasks else heldout)]
    base_values = {k: v.detach().clone() for k, v in learner.meta_parameters().items()}
    g = torch.Generator().manual_seed(1)
    noisy = {k: v + 0.01 * torch.randn(v.shape, generator=g, dtype=v.dtype) if "lora_" in k else v
             for k, v in base_values.items()}
    n_eps = args.episodes * len(tasks)
    if args.before:
        before(args, learner, tokenizer, base_values, noisy, tasks, n_eps)
        return
    from metalm.eval import EvalConfig, Harness, Trained
    from metalm.eval.fewshot import FinetuneChoice
    from metalm.eval.inits import init_from_values

    base = init_from_values(learner, base_values, trained=False)
    trained = init_from_values(learner, noisy)

    def measure(methods: list[str], shared: bool, on: list | None = None) -> tuple[float, dict]:
        cfg = EvalConfig(shots=[args.shots], episodes=args.episodes, ways=args.ways, queries=args.queries,
                         methods=methods, shared_work=shared, max_length=args.max_length)
        rows = [Trained("meta", "meta", trained)] if "meta" in methods else []
        harness = Harness(model, tokenizer, base, cfg, rows, selection.lowest_adapted_layer())
        for t in tasks:  # draw (and render) the episodes outside the timing
            harness.episodes(t, args.shots)
        start = time.perf_counter()
        data = harness.measure(on or tasks, finetune=FinetuneChoice(base, []))  # the inner loop: no grid search
        return time.perf_counter() - start, data

    methods = args.methods.split(",")
    measure(methods, True, tasks[-1:])  # warm-up: a process's first passes pay allocations the others do not
    rows, out = [], {"episodes": n_eps, "shots": args.shots, "ways": args.ways, "queries": args.queries,
                     "max_length": args.max_length, "tasks": [t.name for t in tasks], "alone": {}, "together": {}}
    for method in methods:
        t_ref, a = measure([method], False)
        t_new, b = measure([method], True)
        assert a == b, f"{method}: accuracies differ between the two paths"
        out["alone"][method] = {"reference_s": t_ref, "shared_s": t_new}
        rows.append((method, n_eps / t_ref, n_eps / t_new))
        print(f"{method:9s} alone: {n_eps / t_ref:.3f} -> {n_eps / t_new:.3f} episodes/s "
              f"({t_ref / t_new:.2f}x), accuracies equal", flush=True)
    t_ref, a = measure(methods, False)
    t_new, b = measure(methods, True)
    assert a == b, "accuracies differ between the two paths"
    out["together"] = {"reference_s": t_ref, "shared_s": t_new}
    out["accuracies"] = {f"{m}/{t}": v[0] for (m, t, _), v in b.items()}
    if args.compare:
        with open(args.compare, encoding="utf-8") as fh:
            old = json.load(fh)
        out["before"] = old
        print("\n| method | before (episodes/s) | after, alone (episodes/s) | episodes whose accuracy differs "
              "from before |\n|---|---|---|---|")
        for method in METHODS:
            eps_differ = sum(x != y for t in tasks for x, y in zip(
                old["accuracies"][f"{method}/{t.name}"], out["accuracies"][f"{method}/{t.name}"], strict=True))
            print(f"| {method} | {n_eps / old['seconds'][method]:.3f} | {n_eps / out['alone'][method]['shared_s']:.3f}"
                  f" ({old['seconds'][method] / out['alone'][method]['shared_s']:.2f}x) | {eps_differ} of {n_eps} |")
        total = sum(old["seconds"].values())
        print(f"| all four on the same episodes | {total:.1f} s | {t_new:.1f} s ({total / t_new:.2f}x) | |")
    print(f"all {len(methods)} methods: {t_ref:.1f} s -> {t_new:.1f} s ({t_ref / t_new:.2f}x), "
          f"{len(methods) * n_eps / t_ref:.3f} -> {len(methods) * n_eps / t_new:.3f} method-episodes/s", flush=True)
    print("\n| method | reference path (episodes/s) | shared work (episodes/s) | speed-up |\n|---|---|---|---|")
    for method, ref, new in rows:
        print(f"| {method} (alone) | {ref:.3f} | {new:.3f} | {new / ref:.2f}x |")
    print(f"| all {len(methods)} together | {len(methods) * n_eps / t_ref:.3f} | {len(methods) * n_eps / t_new:.3f} | "
          f"{t_ref / t_new:.2f}x |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)


def before(args: argparse.Namespace, learner, tokenizer, base: dict, trained: dict, tasks: list,  # noqa: ANN001
           n_eps: int) -> None:
    """The harness of commit 85d27b3 (on PYTHONPATH): each method over the episodes, one by one."""
    from metalm.eval import EvalConfig, Harness
    from metalm.eval.fewshot import swapped

    cfg = EvalConfig(shots=[args.shots], episodes=args.episodes, ways=args.ways, queries=args.queries,
                     methods=METHODS)
    harness = Harness(learner, tokenizer, base, trained, cfg)
    harness.finetune_lr, harness.finetune_steps = learner.inner.lr, learner.inner.steps
    for t in tasks:
        harness.episodes(t, args.shots)
    out = {"seconds": {}, "accuracies": {}}
    for method in METHODS:
        start = time.perf_counter()
        with swapped(learner.meta_parameters(), trained if method == "meta" else base):
            for t in tasks:
                out["accuracies"][f"{method}/{t.name}"] = [harness.run_episode(method, ep)["accuracy"]
                                                           for ep in harness.episodes(t, args.shots)]
        out["seconds"][method] = time.perf_counter() - start
        print(f"{method:9s} before: {n_eps / out['seconds'][method]:.3f} episodes/s", flush=True)
    with open(args.json, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
