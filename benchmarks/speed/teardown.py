"""Clean exits of two-process ``distributed: fsdp`` runs on gloo: launch N and count them.

Each launch is ``torchrun --standalone --nproc_per_node 2 -m metalm.cli train`` on a tiny random
Llama (written once, with a BPE tokenizer trained on the packaged BIG-bench tasks' inputs), FOMAML
with the top layer's base weights shared (so sharded, with sharded AdamW state), the default split's
meta-train tasks, 2 outer steps, a checkpoint every step and a validation at step 2 (every process
runs it). A launch is clean when torchrun exits 0 and neither rank printed a C++ abort. Writes
``{"launches", "clean", "exits": {code: count}, "failures": [stderr tails], "seconds"}``.

    python benchmarks/speed/teardown.py --launches 50 --json benchmarks/results/teardown.json

Needs ``metalm download bigbench`` (``make data``). Niced, one thread per rank.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ABORT_MARKERS = ("terminate called", "SIGABRT", "Aborted", "core dumped")


def world(root: Path) -> Path:
    """Write the tiny model and the run config under ``root``; return the config's path."""
    from metalm.data.registry import default_registry, load_split
    from metalm.models import save_tiny_model

    registry = default_registry()
    split = load_split("default", registry)
    texts = [text for name in split.meta_train[:10] for text in registry[name].data["input"][:50]]
    model = save_tiny_model(root / "model", texts, "llama")
    config = {"model": str(model), "adapter": {"rank": 2, "layers": "top:2"}, "meta": {"shared": "top:1"},
              "algorithm": {"name": "fomaml", "inner": {"steps": 2, "lr": 0.3}}, "distributed": "fsdp",
              "split": "default", "sampler": {"ways": 2, "shots": 2, "queries": 2, "drop_small_classes": True},
              "collate": {"max_length": 64}, "outer": {"lr": 0.01, "meta_batch": 4}, "max_steps": 2,
              "val_every": 2, "val_episodes": 2, "checkpoint_every": 1}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def launch(config: Path, run_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = ["nice", "-n", "5", sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
           "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
           "-m", "metalm.cli", "train", str(config), "--run-dir", str(run_dir), "--quiet"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=50)
    parser.add_argument("--json", type=Path, help="write the counts here")
    parser.add_argument("--port", type=int, default=29631, help="rendezvous port (one launch at a time)")
    args = parser.parse_args()
    exits: collections.Counter[int] = collections.Counter()
    failures: list[dict[str, object]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = world(Path(tmp))
        for i in range(args.launches):
            proc = launch(config, Path(tmp) / f"run{i}", args.port)
            aborted = any(m in proc.stderr for m in ABORT_MARKERS)
            exits[proc.returncode] += 1
            if proc.returncode or aborted:
                failures.append({"launch": i, "exit": proc.returncode, "stderr_tail": proc.stderr[-2000:]})
            print(f"launch {i + 1}/{args.launches}: exit {proc.returncode}{' (abort printed)' if aborted else ''}",
                  flush=True)
    result = {"launches": args.launches, "clean": args.launches - len(failures),
              "exits": {str(k): v for k, v in sorted(exits.items())}, "failures": failures,
              "seconds": round(time.perf_counter() - start, 1),
              "command": "python benchmarks/speed/teardown.py --launches " + str(args.launches)}
    print(f"{result['clean']}/{args.launches} clean exits in {result['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    sys.exit(0 if not failures else 1)


if __name__ == "__main__":
    main()
