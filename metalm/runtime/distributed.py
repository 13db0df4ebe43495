"""Running under ``torchrun`` (or ``accelerate launch``): process group, reductions, sharded work.

metalm replicates the model on every process and spreads the *episodes* of a meta-batch over
them: each process computes the meta-gradient of its share, and one all-reduce per outer step
averages them (an explicit reduction: DDP's gradient hooks do not mix with the inner loop's
``torch.autograd.grad``). ``gloo`` is used on CPU, ``nccl`` on CUDA.

Launching through an FSDP or DeepSpeed accelerate config is refused: those engines break double
backward (pytorch#172543, DeepSpeed#3539), so second-order meta-gradients through them would be
wrong. metalm shards the base model itself for first-order runs (``distributed: fsdp`` in the run
config, :mod:`metalm.sharding`).
"""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from ..errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")
_SHARDED_ENGINES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


@dataclasses.dataclass(frozen=True)
class Context:
    """This process's place in the job.

    Attributes:
        rank: Global rank.
        world_size: Number of processes.
        local_rank: Rank on this machine (picks the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str = "auto") -> Context:
    """Join the process group that ``torchrun`` describes in the environment (no-op for one process).

    Args:
        device: ``auto``/``cuda``/``cpu``: the backend is ``nccl`` for CUDA, ``gloo`` otherwise.

    Raises:
        ConfigError: Under an FSDP or DeepSpeed launch config (see the module doc).
    """
    for var, engine in _SHARDED_ENGINES.items():
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            raise ConfigError("launch", f"{engine} is not supported: it breaks double backward (pytorch#172543, "
                                        "DeepSpeed#3539) and metalm replicates or shards the model itself "
                                        "(distributed: fsdp in the run config); launch with a plain "
                                        "multi-GPU/multi-CPU accelerate config or torchrun")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Context()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Context(rank, world_size, local_rank)


def current() -> Context:
    """The context of an already initialized process group (one process otherwise)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shard(n: int, ctx: Context) -> range:
    """The contiguous share ``range`` of ``n`` items that ``ctx.rank`` handles.

    Raises:
        ConfigError: If ``n`` is not divisible by the world size (the global meta-batch must be
            the same whatever the number of processes).
    """
    if n % ctx.world_size:
        raise ConfigError("outer.meta_batch", f"{n} episodes cannot be split evenly over {ctx.world_size} "
                                              "processes; use a multiple of the process count")
    per = n // ctx.world_size
    return range(ctx.rank * per, (ctx.rank + 1) * per)


def average_gradients(params: Sequence[torch.Tensor], ctx: Context) -> None:
    """All-reduce ``.grad`` of ``params`` to its mean over processes (one flat bucket).

    A tensor without a gradient on every process keeps ``grad=None`` (as in one process, so that
    the optimizer skips it the same way); one with a gradient somewhere gets the mean, zeros
    counted for the processes without. Sharded tensors (``distributed: fsdp``) are left alone: FSDP
    reduce-scatters their gradients to the mean in the backward.
    """
    params = [p for p in params if not isinstance(p, DTensor)]
    if not ctx.enabled or not params:
        return
    has = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(has)
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for p, present in zip(params, has.tolist(), strict=True):
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone() if present else None
        offset += n


def average_metrics(metrics: dict[str, float], ctx: Context) -> dict[str, float]:
    """Mean of each metric over processes (keys missing on some process average over those that have it)."""
    if not ctx.enabled:
        return metrics
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, metrics)
    keys = dict.fromkeys(k for m in gathered for k in m)
    return {k: sum(m[k] for m in gathered if k in m) / sum(k in m for m in gathered) for k in keys}


def gather_objects(obj: T, ctx: Context) -> list[T]:
    """Every process's ``obj``, in rank order."""
    if not ctx.enabled:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def map_sharded(items: Sequence[T], fn: Callable[[T], R], ctx: Context | None = None) -> list[R]:
    """``[fn(x) for x in items]`` with the items dealt round-robin over processes; every process gets
    the full list back in item order."""
    ctx = ctx or current()
    if not ctx.enabled:
        return [fn(x) for x in items]
    mine = {i: fn(x) for i, x in enumerate(items) if i % ctx.world_size == ctx.rank}
    merged: dict[int, R] = {}
    for part in gather_objects(mine, ctx):
        merged.update(part)
    return [merged[i] for i in range(len(items))]


def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier()


def close(ok: bool = True) -> None:
    """Leave the process group before the interpreter exits (no-op without one).

    A gloo group left to static destruction can abort the process ("terminate called without an
    active exception", SIGABRT) while its peer still talks to it. On success every process first
    waits for the others, so none tears its end down while a peer is still in a collective; after
    an error the group is torn down without waiting (the peers may never arrive).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    # Free, while the interpreter is whole, the reference cycles that keep an FSDP model alive with its
    # last asynchronous collectives' work objects: gloo work destroyed during interpreter finalization
    # can abort the process (the mechanism of pytorch/pytorch#179291; a suspected cause of the rare
    # abort after a finished sharded run, not yet confirmed).
    gc.collect()
    if ok:
        dist.barrier()
    dist.destroy_process_group()
