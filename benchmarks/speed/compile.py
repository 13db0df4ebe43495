"""``inner.compile``: first-order meta-steps with the inner loop's loss through ``torch.compile`` vs eager.

FOMAML meta-steps (the real code path) on the tiny GPT-2 of ``meta_step.py`` with LoRA r=8, on a
stream of meta-batches whose widths vary (as episodes of real tasks do): the first compiled steps
pay the compilation, later ones should reuse it (dynamic shapes). Reports the compilation
overhead (first ``--warmup`` steps, compiled minus eager) and the steady-state median per step;
the meta-gradients of the first step are checked equal. One layer range per process (compiled
code is cached per function across models).

    python benchmarks/speed/compile.py --layers all
    python benchmarks/speed/compile.py --layers top:2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from jsonout import add_json_argument, write_json
from vmap_tasks import meta_step, tasks

import metalm
from metalm import AdapterConfig, InnerConfig, MetaConfig


def build(layers: str, compile: bool, steps: int) -> metalm.algorithms.MetaLearner:
    config = metalm.tiny_config("gpt2", vocab_size=8192, n_embd=128, n_layer=4, n_head=4, n_positions=512)
    adapter = AdapterConfig(kind="lora", rank=8, alpha=16.0, layers=layers)
    model = metalm.apply_adapter(metalm.load_model(config, seed=0), adapter)
    selection = metalm.select_parameters(model, adapter, MetaConfig())
    inner = InnerConfig(steps=steps, lr=0.05, first_order=True, compile=compile)
    return metalm.build_algorithm("fomaml", model, selection, {"inner": inner})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default="all", help="LoRA layer range (top:2 uses the prefix cache)")
    parser.add_argument("--steps", type=int, default=4, help="inner steps k")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=4, help="meta-steps counted as compilation")
    parser.add_argument("--measure", type=int, default=8, help="meta-steps timed after the warm-up")
    add_json_argument(parser)
    args = parser.parse_args()
    print(f"tiny GPT-2 (vocab 8192, width 128, 4 layers), FOMAML k={args.steps}, {args.tasks} tasks of 4+4 rows, "
          f"widths 45-64 tokens varying by step, CPU, torch {torch.__version__}")
    print("| LoRA layers | eager s / step | compiled s / step | eager / compiled | compilation overhead s "
          f"(first {args.warmup} steps) |")
    print("|---|---|---|---|---|")
    layers = args.layers
    eager, compiled = build(layers, False, args.steps), build(layers, True, args.steps)
    batches = [tasks(args.tasks, 4, 48 + (3 * i) % 17, torch.device("cpu"), seed=i)
               for i in range(args.warmup + args.measure)]
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    grads = {}
    for name, learner in (("eager", eager), ("compiled", compiled)):
        for i, episodes in enumerate(batches):
            start = time.perf_counter()
            out = meta_step(learner, episodes)
            times[name].append(time.perf_counter() - start)
            if i == 0:
                grads[name] = {k: v.clone() for k, v in out.items()}
    assert all(torch.allclose(grads["eager"][k], v, rtol=1e-4, atol=1e-6) for k, v in grads["compiled"].items())
    w = args.warmup
    e, c = statistics.median(times["eager"][w:]), statistics.median(times["compiled"][w:])
    overhead = sum(times["compiled"][:w]) - sum(times["eager"][:w])
    print(f"| {layers} | {e:.3f} | {c:.3f} | {e / c:.2f} | {overhead:.1f} |", flush=True)
    write_json(args.json, [{"layers": layers, "eager_seconds_per_step": e, "compiled_seconds_per_step": c,
                            "speedup": e / c, "compilation_overhead_seconds": overhead}],
               steps=args.steps, tasks=args.tasks, warmup=args.warmup, measure=args.measure)

if __name__ == "__main__":
    main()
