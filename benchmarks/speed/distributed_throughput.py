"""Meta-training throughput with 1 and with P processes (torchrun, gloo on CPU / nccl on CUDA).

Runs ``metalm train CONFIG`` for a few outer steps once per process count, each in a fresh run
folder, and reads the per-step wall time that rank 0 logs (``seconds`` in ``log.jsonl``; the first
step is dropped as warm-up). The global meta-batch is the same in every run, so episodes per second
compare directly.

    python benchmarks/speed/distributed_throughput.py benchmarks/fewshot/fomaml.yaml --steps 6 --procs 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from jsonout import add_json_argument, write_json  # same directory


def run(config: str, procs: int, steps: int, threads: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
            if procs > 1 else [sys.executable]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo"}
        cmd = [*launch, "-m", "metalm.cli", "train", config, "--run-dir", f"{tmp}/run", "--quiet",
               "--max-steps", str(steps), "val_every=0", f"checkpoint_every={steps}", *overrides]
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        log = [json.loads(line) for line in Path(f"{tmp}/run/log.jsonl").read_text().splitlines()]
        meta_batch = yaml.safe_load(Path(f"{tmp}/run/config.yaml").read_text())["outer"]["meta_batch"]
    seconds = statistics.median(r["seconds"] for r in log[1:])
    return {"procs": procs, "threads_per_proc": threads, "seconds_per_step": seconds,
            "episodes_per_second": meta_batch / seconds, "meta_batch": meta_batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU threads shared by the processes")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    add_json_argument(parser)
    args = parser.parse_args()
    rows = [run(args.config, p, args.steps, max(1, args.cores // p), args.overrides)
            for p in (int(x) for x in args.procs.split(","))]
    base = rows[0]["episodes_per_second"]
    print("| processes | threads each | meta-batch | s / outer step | episodes / s | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['procs']} | {r['threads_per_proc']} | {r['meta_batch']} | {r['seconds_per_step']:.2f} | "
              f"{r['episodes_per_second']:.2f} | {r['episodes_per_second'] / base:.2f}x |")
    write_json(args.json, [{**r, "speedup": r["episodes_per_second"] / base} for r in rows], config=str(args.config),
               steps=args.steps)


if __name__ == "__main__":
    main()
