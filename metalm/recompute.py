"""Recomputing an inner step during the meta-backward instead of storing its graph.

Second-order MAML keeps, for every inner step, the forward activations and the inner backward's
intermediates until the meta-backward: memory grows linearly with the steps. :func:`recomputed`
runs a step function once without a graph (its outputs only) and again, with the graph, while the
meta-backward passes through it: one step's graph is alive at a time, for about one extra forward
and inner backward per step. ``torch.utils.checkpoint`` (non-reentrant, torch 2.13) refuses such a
step: its recomputation of ``torch.autograd.grad(..., create_graph=True)`` saves a different number
of tensors than the original forward (``CheckpointError``), hence this small autograd function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

StepFn = Callable[..., Sequence[Tensor]]  # fn(*tensors, create_graph=bool) -> outputs


def _autocast_state() -> list[tuple[str, bool, torch.dtype]]:
    return [(d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cpu", "cuda")]


def _autocast(state: list[tuple[str, bool, torch.dtype]]) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for device, enabled, dtype in state:
        if enabled:
            stack.enter_context(torch.autocast(device, dtype=dtype))
    return stack


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn: StepFn, *xs: Tensor) -> tuple[Tensor, ...]:  # noqa: ANN001
        ctx.fn, ctx.autocast = fn, _autocast_state()
        ctx.save_for_backward(*xs)
        with torch.enable_grad():
            outs = fn(*(x.detach().requires_grad_(x.requires_grad) for x in xs), create_graph=False)
        return tuple(o.detach() for o in outs)

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        needs = ctx.needs_input_grad[1:]
        ins = [x.detach().requires_grad_(need or x.requires_grad) for x, need in zip(ctx.saved_tensors, needs,
                                                                                         strict=True)]
        with torch.enable_grad(), _autocast(ctx.autocast):
            outs = ctx.fn(*ins, create_graph=True)
        pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None and o.requires_grad]
        wanted = [x for x, need in zip(ins, needs, strict=True) if need]
        if not pairs or not wanted:
            return (None, *(None for _ in needs))
        got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True,
                                       materialize_grads=True))
        return (None, *(next(got) if need else None for need in needs))


def recomputed(fn: StepFn, tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """``fn(*tensors)``'s outputs, differentiable w.r.t. ``tensors`` by recomputing ``fn`` in the backward.

    ``fn(*tensors, create_graph=...)`` must be deterministic and return tensors; it is called once
    now with ``create_graph=False`` (the outputs are values) and once per backward through the
    outputs with ``create_graph=True`` (its graph, second-order terms included, lives only while
    that backward passes). Autocast state is restored for the recomputation.
    """
    return _Recompute.apply(fn, *tensors)
