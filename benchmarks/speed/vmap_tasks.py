"""Task-parallel meta-steps: ``inner.vmap`` (torch.func.vmap over the meta-batch) vs the loop.

The real code path (:meth:`MetaLearner.meta_gradients`) with ``inner.vmap`` on and off, on a tiny
GPT-2 (vocab 8,192, width 128, 4 layers) with LoRA (rank 8) on every layer; each task has its own
support and query sets of ``--rows`` rows x ``--tokens`` tokens (4 targets per row, widths vary
by task so the padding is exercised). Medians of interleaved repeats in one process; the two
paths' meta-gradients are checked equal first.

    python benchmarks/speed/vmap_tasks.py --tasks 4,8,16
"""

from __future__ import annotations

import argparse
import statistics

import torch
from jsonout import add_json_argument, write_json  # same directory
from meta_step import timed  # same directory

import metalm
from metalm import AdapterConfig, InnerConfig, MetaConfig


def build(device: torch.device, algo: str, steps: int, vmap: bool, seed: int = 0) -> metalm.algorithms.MetaLearner:
    config = metalm.tiny_config("gpt2", vocab_size=8192, n_embd=128, n_layer=4, n_head=4, n_positions=512)
    adapter = AdapterConfig(kind="lora", rank=8, alpha=16.0)
    model = metalm.apply_adapter(metalm.load_model(config, seed=seed, device=device), adapter)
    selection = metalm.select_parameters(model, adapter, MetaConfig())
    inner = InnerConfig(steps=steps, lr=0.05, vmap=vmap, first_order=algo in ("fomaml", "reptile"))
    return metalm.build_algorithm(algo, model, selection, {"inner": inner})


def tasks(n: int, rows: int, tokens: int, device: torch.device, seed: int = 0) -> list[metalm.Episode]:
    g = torch.Generator().manual_seed(seed)

    def batch(width: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, 8192, (rows, width), generator=g)
        labels = torch.full_like(ids, -100)
        labels[:, -4:] = ids[:, -4:]
        return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                             "labels": labels}.items()}

    return [metalm.Episode(batch(tokens - i % 4), batch(tokens - (i + 1) % 4), f"task{i}") for i in range(n)]


def meta_step(learner: metalm.algorithms.MetaLearner, episodes: list[metalm.Episode]) -> dict[str, torch.Tensor]:
    for p in learner.meta_parameters().values():
        p.grad = None
    learner.meta_gradients(episodes)
    return {n: p.grad for n, p in learner.meta_parameters().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="4,8,16")
    parser.add_argument("--algorithms", default="maml,fomaml,reptile")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_json_argument(parser)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"tiny GPT-2 (vocab 8192, width 128, 4 layers), LoRA r=8 on every layer, k={args.steps}, "
          f"{args.rows} support + {args.rows} query rows of {args.tokens - 3}-{args.tokens} tokens per task, {device}")
    print("| algorithm | tasks | loop s | vmap s | loop / vmap |")
    rows = []
    print("|---|---|---|---|---|")
    for algo in args.algorithms.split(","):
        loop, vmapped = build(device, algo, args.steps, False), build(device, algo, args.steps, True)
        for n in (int(x) for x in args.tasks.split(",")):
            episodes = tasks(n, args.rows, args.tokens, device)
            a, b = meta_step(loop, episodes), meta_step(vmapped, episodes)
            assert vmapped.vmap_failure is None, vmapped.vmap_failure
            assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a), f"{algo}: gradients differ"
            times: dict[str, list[float]] = {"loop": [], "vmap": []}
            for _ in range(args.repeats):
                for name, learner in (("loop", loop), ("vmap", vmapped)):
                    times[name].append(timed(lambda lr=learner, eps=episodes: meta_step(lr, eps), device))
            t_loop, t_vmap = statistics.median(times["loop"]), statistics.median(times["vmap"])
            print(f"| {algo} | {n} | {t_loop:.3f} | {t_vmap:.3f} | {t_loop / t_vmap:.2f} |", flush=True)
            rows.append({"algorithm": algo, "tasks": n, "loop_seconds": t_loop, "vmap_seconds": t_vmap,
                         "speedup": t_loop / t_vmap})
    write_json(args.json, rows, steps=args.steps, rows_per_set=args.rows, tokens=args.tokens, repeats=args.repeats,
               device=str(device))


if __name__ == "__main__":
    main()
