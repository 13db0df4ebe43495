"""How much a second busy process slows a meta-training step on the same cores, by thread count.

A FOMAML meta-gradient at a run config's shapes (one episode of ``--task``, the FOMAML config
by default) is timed in this process: alone, then while a second process runs the same workload
without pause, with both processes at torch's default intra-op thread count and with both at 1
thread. Explains step times many times the usual ones when another job shares a small machine:
two processes that each start one OpenMP thread per core oversubscribe the cores, and a thread
that is descheduled in the middle of a parallel region stalls the others at its barrier.

    python benchmarks/speed/contention.py benchmarks/fewshot/fomaml.yaml --task analogical_similarity
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from metalm.data import EpisodeSampler, tensorize
from metalm.run import build_model, build_registry, load_train_config


def workload(config_path: str, task: str):  # noqa: ANN201 - (learner, episode)
    config = load_train_config(config_path)
    registry = build_registry(config)
    tokenizer, _, _, learner = build_model(config, torch.device("cpu"))
    episode = EpisodeSampler([registry[task]], config.sampler, seed=config.seed).sample()
    return learner, tensorize(episode, tokenizer, config.collate, learner.queries)


def step_seconds(learner, episode, repeats: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(repeats):
        for p in learner.meta_parameters().values():
            p.grad = None
        start = time.perf_counter()
        learner.meta_gradients([episode])
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="benchmarks/fewshot/fomaml.yaml")
    ap.add_argument("--task", default="analogical_similarity")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--busy", action="store_true", help=argparse.SUPPRESS)  # the competing process
    ap.add_argument("--json")
    args = ap.parse_args()
    learner, episode = workload(args.config, args.task)
    if args.busy:
        while True:
            step_seconds(learner, episode, 1)
    default_threads = torch.get_num_threads()
    rows = []
    for threads in (default_threads, 1):
        torch.set_num_threads(threads)
        step_seconds(learner, episode, 1)  # warm-up
        alone = step_seconds(learner, episode, args.repeats)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        busy = subprocess.Popen([sys.executable, __file__, args.config, "--task", args.task, "--busy"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(20)  # the competitor loads its model and starts stepping
            shared = step_seconds(learner, episode, args.repeats)
        finally:
            busy.kill()
            busy.wait()
        row = {"threads": threads, "alone_s": statistics.median(alone), "shared_s": statistics.median(shared),
               "shared_max_s": max(shared)}
        row["slowdown"] = row["shared_s"] / row["alone_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.task}, FOMAML meta-gradient of one episode ({args.config}), {os.cpu_count()} cores; median of "
          f"{args.repeats}\n\n| threads per process | alone s | with a second busy process s (max) | slowdown |\n"
          "|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['alone_s']:.2f} | {r['shared_s']:.2f} ({r['shared_max_s']:.2f}) | "
              f"{r['slowdown']:.1f}x |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"task": args.task, "config": args.config, "cores": os.cpu_count(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
