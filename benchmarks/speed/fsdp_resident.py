"""Where a process's resident memory goes when `distributed: fsdp` shards SmolLM2-135M (2 processes).

Builds the FOMAML config's model (benchmarks/fewshot/fomaml.yaml, every base weight shared) in each process,
then shards it when SHARD=1, and prints rank 0's resident memory (MiB) after each stage, the bytes of
parameters it holds, and its anonymous vs file-backed resident memory (/proc/self/status).

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 benchmarks/speed/fsdp_resident.py
    SHARD=1 OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 benchmarks/speed/fsdp_resident.py
"""

import ctypes
import gc
import os

import torch
import torch.distributed as dist

from metalm.run import build_model, load_train_config
from metalm.sharding import parameter_bytes, shard_model


def resident_mib() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    config = load_train_config("benchmarks/fewshot/fomaml.yaml", {"meta": {"shared": "all"}})
    rows = [("start", resident_mib())]
    _, model, selection, _ = build_model(config, torch.device("cpu"))
    gc.collect()
    rows.append(("built", resident_mib()))
    if os.environ.get("SHARD"):
        shard_model(model, selection, dist.get_world_size())
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    rows.append(("sharded" if os.environ.get("SHARD") else "replicated", resident_mib()))
    held, whole = parameter_bytes(model, [n for n, _ in model.named_parameters()])
    status = {k: v.split()[0] for k, v in (line.split(":", 1) for line in open("/proc/self/status"))
              if k in ("RssAnon", "RssFile")}
    if rank == 0:
        print(" ".join(f"{k} {v:.0f} MiB" for k, v in rows),
              f"| parameters held {held / 2**20:.0f} of {whole / 2**20:.0f} MiB",
              f"| anonymous {int(status['RssAnon']) / 1024:.0f} MiB,",
              f"file-backed {int(status['RssFile']) / 1024:.0f} MiB")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
