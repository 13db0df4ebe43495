"""``distributed: fsdp``: the base model sharded across processes by PyTorch FSDP2, fast weights replicated.

Under ``torchrun``, :func:`shard_model` applies ``torch.distributed.fsdp.fully_shard`` to every
decoder layer and to the loss's wrapper of the whole model (embeddings, final norm, head), so each
process keeps ~1/N of the frozen base's tensors (and of any ``meta.shared`` weights, their gradients
and their AdamW state) and all-gathers a unit's weights just for its forward and backward. The fast
weights (LoRA, the adapted initialization) are ``ignored_params``: plain tensors, the same on every
process, swapped in by ``torch.func.functional_call`` as in one process; their meta-gradients are
all-reduced by :func:`metalm.runtime.distributed.average_gradients`, the sharded weights' ones
reduce-scattered by FSDP itself in the backward.

Only first-order outer steps run on it: FSDP does not support double backward (pytorch#172543), so
second-order MAML, checkpointed MAML and iMAML are refused (:func:`check_algorithm`). The helpers
below let the rest of metalm treat a sharded tensor (a ``DTensor``) like a plain one: its full value
for checkpoints, its local shard for norms and finiteness checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from .errors import ConfigError
from .losses import SHARDED_ROOT, _TargetHead
from .models import decoder_layers
from .params import ParameterSelection


def alternatives(first_order: Sequence[str]) -> str:
    """What to do instead of a second-order algorithm under fsdp, naming the algorithms that run sharded."""
    return (f"use a first-order algorithm under distributed: fsdp ({', '.join(first_order)}, or "
            "inner.first_order: true), or keep the model replicated (distributed: replicate) and save "
            "memory with inner.recompute: true (checkpointed MAML) or algorithm: imaml")


def check_algorithm(name: str, config: Any, double_backward: bool, first_order: Sequence[str] = ()) -> None:
    """Refuse what cannot run on a sharded base (one line naming the alternatives); ``double_backward``:
    whether the algorithm's outer step differentiates through gradients, as it declares it
    (:meth:`metalm.algorithms.MetaLearner.needs_double_backward`); ``first_order``: the registered
    algorithms that run sharded (:func:`metalm.algorithms.base.sharded_algorithms`), named in the error.

    Raises:
        ConfigError: For second-order outer steps (double backward through FSDP, pytorch#172543),
            iMAML (Hessian-vector products are double backward too), and the options that need the
            whole model in one process: ``inner.vmap``, ``inner.compile``. What else an algorithm
            cannot run sharded it refuses itself (:meth:`metalm.algorithms.MetaLearner.check_sharded`).
    """
    inner = getattr(config, "inner", None)
    if double_backward:
        raise ConfigError("distributed", f"fsdp cannot run {name} with second-order meta-gradients: FSDP does "
                                         f"not support double backward (pytorch#172543); {alternatives(first_order)}")
    for option in ("vmap", "compile"):
        if inner is not None and getattr(inner, option):
            raise ConfigError(f"algorithm.inner.{option}", f"not supported with distributed: fsdp (the sharded "
                                                          f"layers' hooks do not run under torch.func.{option})")


def shard_model(model: nn.Module, selection: ParameterSelection, world_size: int) -> None:
    """``fully_shard`` every decoder layer of ``model`` and then the rest (embeddings, final norm,
    head), in place; the fast weights stay whole on every process.

    Args:
        model: The adapted model (PEFT-wrapped or not), already on its device.
        selection: Which tensors are fast (replicated) and shared (sharded, updated by the outer step).
        world_size: Processes in the default group (the mesh is all of them).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = next(model.parameters()).device.type
    mesh = init_device_mesh(device, (world_size,))
    named = dict(model.named_parameters())
    ignored = {named[n] for n in selection.fast}
    prefix, n_layers = decoder_layers(model)
    layers = model.get_submodule(prefix)
    for i in range(n_layers):
        fully_shard(layers[i], mesh=mesh, ignored_params=ignored)
    # The root unit (embeddings, final norm, output head, tied or not) must be a module that every
    # forward goes through: the loss's own wrapper, kept on the model (not as a submodule) for
    # metalm.losses to call.
    root = _TargetHead(model)
    fully_shard(root, mesh=mesh, ignored_params=ignored)
    object.__setattr__(model, SHARDED_ROOT, root)


def is_sharded(t: Tensor) -> bool:
    return isinstance(t, DTensor)


def full(t: Tensor) -> Tensor:
    """The whole value of ``t`` (an all-gather for a sharded tensor: every process must call it)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def local(t: Tensor) -> Tensor:
    """This process's part of ``t`` (``t`` itself when not sharded)."""
    return t.to_local() if isinstance(t, DTensor) else t


def like(value: Tensor, param: Tensor) -> Tensor:
    """``value`` (a whole tensor, the same on every process) laid out like ``param``: sharded the same
    way when ``param`` is sharded."""
    if isinstance(param, DTensor):
        return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    return value


def assign(param: Tensor, value: Tensor) -> None:
    """``param.copy_(value)`` for a whole ``value``, sharded or not (under ``no_grad``)."""
    with torch.no_grad():
        param.copy_(like(value, param))


def _all_reduce(t: Tensor, op: dist.ReduceOp.RedOpType) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t


def grads_health(params: Sequence[Tensor]) -> tuple[bool, bool]:
    """``(finite, zero)``: whether every gradient of ``params`` is finite, and whether every one is
    exactly zero (no parameter received any signal: a saturated or diverged inner loop). Parameters
    without a gradient count as zero. One device sync; with sharded gradients one all-reduce, so every
    process gets the same answer."""
    grads = [local(p.grad) for p in params if p.grad is not None]
    if grads:
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
        zero = torch.stack([~g.ne(0).any() for g in grads]).all()
        flags = torch.stack([finite, zero]).to(torch.float32)
    else:
        flags = torch.ones(2)
    if any(is_sharded(p.grad) for p in params if p.grad is not None):
        flags = _all_reduce(flags, dist.ReduceOp.MIN)  # finite everywhere; zero everywhere
    finite_all, zero_all = (bool(v > 0) for v in flags.tolist())
    return finite_all, zero_all and finite_all


def clip_grad_norm_(params: Iterable[Tensor], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_`` over a mix of replicated and sharded gradients: the squared
    norms of the local shards are summed over processes, the replicated ones counted once.

    Returns:
        The total norm before clipping.
    """
    with_grad = [p for p in params if p.grad is not None]
    grads = [p.grad for p in with_grad]
    if not any(is_sharded(g) for g in grads):
        return float(torch.nn.utils.clip_grad_norm_(with_grad, max_norm))
    def squares(gs: Iterable[Tensor]) -> Tensor:  # float64 sums: as exact as torch's own norm in any dtype
        return sum((g.detach().double().pow(2).sum().cpu() for g in gs), torch.zeros((), dtype=torch.float64))

    shards = squares(local(g) for g in grads if is_sharded(g))
    shards = _all_reduce(shards.to(grads[0].device), dist.ReduceOp.SUM).cpu()
    total = float((squares(g for g in grads if not is_sharded(g)) + shards).sqrt())
    scale = max_norm / (total + 1e-6)
    if scale < 1:
        for g in grads:
            local(g).mul_(scale)
    return total


def parameter_bytes(model: nn.Module, names: Iterable[str]) -> tuple[int, int]:
    """Bytes of the named parameters held by this process, and of their whole values."""
    named = dict(model.named_parameters())
    held = whole = 0
    for n in names:
        p = named[n]
        held += local(p).numel() * p.element_size()
        whole += p.numel() * p.element_size()
    return held, whole


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict`` of whole tensors: lay each sharded parameter's state out like it."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not is_sharded(p):
                continue
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, Tensor) and not is_sharded(value) and value.shape == p.shape:
                    state[key] = like(value, p)
