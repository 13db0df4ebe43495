"""How a meta-step's time and peak memory grow with inner steps k, tasks per meta-batch and sequence length.

MAML (second order), FOMAML and MAML with ``inner.vmap`` on the tiny GPT-2 of ``meta_step.py``
(vocab 8,192, width 128, 4 layers) with LoRA r=8 on every layer; each task has 4 support and 4
query rows with 4 target tokens. One axis moves at a time from the base point (k=2, 4 tasks,
48 tokens). Every point runs in a fresh process: the peak is the growth of the peak resident set
(CPU; ``max_memory_allocated`` on CUDA) over the footprint after one forward, the time the median
of ``--repeats`` meta-steps after a warm-up. Writes a table and a PNG.

    python benchmarks/speed/growth.py --out benchmarks/results/growth.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from peak import PeakGrowth  # same directory
from vmap_tasks import build, meta_step, tasks  # noqa: E402  (same directory)

import metalm

BASE = {"k": 2, "tasks": 4, "tokens": 48}
AXES = {"k": [1, 2, 4, 8], "tasks": [1, 2, 4, 8, 16], "tokens": [32, 64, 128, 256]}
VARIANTS = {"MAML": ("maml", False), "FOMAML": ("fomaml", False), "MAML, vmap": ("maml", True)}
LABELS = {"k": "inner steps k", "tasks": "tasks per meta-batch", "tokens": "tokens per row"}


def child(variant: str, k: int, n_tasks: int, tokens: int, repeats: int, device: torch.device) -> dict[str, float]:
    algo, vmap = VARIANTS[variant]
    learner = build(device, algo, k, vmap)
    episodes = tasks(n_tasks, 4, tokens, device)
    with torch.no_grad():  # touch the weights, so lazily mapped pages count in the baseline
        metalm.lm_loss(learner.model, {}, episodes[0].support)
    peak = PeakGrowth(device)
    meta_step(learner, episodes)  # warm-up, and the peak
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        meta_step(learner, episodes)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "mib": peak.mib()}


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for col, axis in enumerate(AXES):
        for variant in VARIANTS:
            pts = sorted((r[axis], r["seconds"], r["mib"]) for r in rows
                         if r["axis"] == axis and r["variant"] == variant)
            xs = [p[0] for p in pts]
            axes[0, col].plot(xs, [p[1] for p in pts], marker="o", label=variant)
            axes[1, col].plot(xs, [p[2] for p in pts], marker="o", label=variant)
        for row, ylabel in enumerate(("seconds per meta-step", "peak memory growth (MiB)")):
            ax = axes[row, col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(AXES[axis], [str(x) for x in AXES[axis]])
            ax.set_xlabel(LABELS[axis])
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend()
    others = ", ".join(f"{k}={v}" for k, v in BASE.items())
    fig.suptitle(f"Meta-step growth, tiny GPT-2 + LoRA (base point {others}; one axis moves at a time)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/growth.png"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(spec["variant"], spec["k"], spec["tasks"], spec["tokens"], args.repeats,
                               torch.device(args.device))))
        return
    rows = []
    print(f"| axis | value | {' | '.join(f'{v} s | {v} MiB' for v in VARIANTS)} |")
    print(f"|---|---|{'---|---|' * len(VARIANTS)}")
    for axis, values in AXES.items():
        for value in values:
            cells = []
            for variant in VARIANTS:
                spec = {**BASE, axis: value, "variant": variant}
                out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec), "--repeats",
                                      str(args.repeats), "--device", args.device],
                                     capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({**spec, **result, "axis": axis})
                cells.append(f"{result['seconds']:.3f} | {result['mib']:.0f}")
            print(f"| {axis} | {value} | {' | '.join(cells)} |", flush=True)
    plot(rows, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
