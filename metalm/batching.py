"""Task-parallel inner loops: the tasks of a meta-batch run together under ``torch.func.vmap``.

The per-task function is the same code the sequential loop runs (:func:`metalm.adapt` and the
query loss); :func:`stack_batches` pads the tasks' batches to one shape and stacks them along a
new leading task dimension, and :func:`vmap_tasks` maps the function over it, as in the
``torch.func`` MAML example (one functional inner loop, batched over tasks). Inside ``vmap`` the
inner loop takes its gradients with ``torch.func.grad`` (see :func:`metalm.inner.under_vmap`).

Two things a transformer does are not ``vmap``-able and are done before it: finding the target
positions (:func:`metalm.prepare_batch` reads the labels' values) and the model's own attention
mask construction (transformers inspects the padding mask's values to skip it). The stacked batch
therefore carries ``dense_mask``, a ready ``[B, 1, T, T]`` causal and padding mask that the model
uses as given. Padding a batch to a wider ``T`` on the right changes no value at its real tokens.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import tree_map

from .errors import BatchError
from .losses import IGNORE_INDEX, Batch, prepare_batch
from .models import attention_implementation

#: Batch keys that are stacked; every other key is dropped.
STACKED_KEYS = ("input_ids", "attention_mask", "labels", "target_positions", "target_ids")


def dense_mask(attention_mask: Tensor, model: nn.Module, dtype: torch.dtype) -> Tensor:
    """The causal and padding mask ``[B, 1, T, T]`` the model's attention takes as given.

    Boolean (``True`` = attend) for ``sdpa``, additive (``0`` / most negative) for ``eager``.
    Padding positions attend to themselves, so no softmax row is empty (an empty row is NaN, and
    a NaN at a padding key would reach real tokens as ``0 * NaN`` in the next layer).

    Args:
        attention_mask: ``[B, T]``, 1 for real tokens.
        model: The model (its attention implementation decides the mask's form).
        dtype: The model's floating dtype (for the additive form).
    """
    t = attention_mask.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril()
    eye = torch.eye(t, dtype=torch.bool, device=attention_mask.device)
    allowed = (causal & attention_mask.bool()[:, None, None, :]) | eye
    if attention_implementation(model) == "sdpa":
        return allowed
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def _pad(batch: dict[str, Tensor], width: int, targets: int) -> dict[str, Tensor]:
    extra_t, extra_m = width - batch["input_ids"].shape[1], targets - batch["target_positions"].shape[1]
    mask = batch.get("attention_mask")
    mask = torch.ones_like(batch["input_ids"]) if mask is None else mask
    return {
        "input_ids": F.pad(batch["input_ids"], (0, extra_t), value=0),
        "attention_mask": F.pad(mask, (0, extra_t), value=0),
        "labels": F.pad(batch["labels"], (0, extra_t), value=IGNORE_INDEX),
        "target_positions": F.pad(batch["target_positions"], (0, extra_m), value=0),
        "target_ids": F.pad(batch["target_ids"], (0, extra_m), value=IGNORE_INDEX),
    }


def stack_batches(batches: Sequence[Batch], model: nn.Module) -> dict[str, Tensor] | None:
    """Pad the tasks' batches to one shape and stack them: ``[n_tasks, B, ...]`` per key.

    Rows are right-padded to the widest batch and target lists to the longest; ``dense_mask``
    ``[n_tasks, B, 1, T, T]`` is added. Returns ``None`` when the batches have different numbers
    of rows (they cannot share one shape without changing the loss's mean) or the model's attention
    is neither ``sdpa`` nor ``eager`` (the kernels that take a dense mask).

    Raises:
        BatchError: On a malformed batch (see :func:`metalm.prepare_batch`).
    """
    if not batches:
        raise BatchError("no batches to stack")
    prepared = [prepare_batch(b, f"task {i}'s batch") for i, b in enumerate(batches)]
    if len({b["input_ids"].shape[0] for b in prepared}) > 1 or attention_implementation(model) not in ("sdpa", "eager"):
        return None
    width = max(b["input_ids"].shape[1] for b in prepared)
    targets = max(b["target_positions"].shape[1] for b in prepared)
    padded = [_pad(b, width, targets) for b in prepared]
    out = {k: torch.stack([b[k] for b in padded]) for k in STACKED_KEYS}
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    mask = dense_mask(out["attention_mask"].flatten(0, 1), model, dtype)
    out["dense_mask"] = mask.unflatten(0, out["input_ids"].shape[:2])
    return out


def vmap_tasks(fn: Callable[..., Any], *stacked: dict[str, Tensor]) -> Any:
    """``fn`` applied to each task's slice of the stacked batches at once; outputs stacked on dim 0.

    Random operations raise (``randomness="error"``): a model with active dropout is not run in
    parallel (its tasks would share or lose their randomness). Attention runs SDPA's math kernel:
    the fused kernels have no batching rule, and ``vmap`` would run them task by task.
    """
    with sdpa_kernel(SDPBackend.MATH):
        return torch.func.vmap(fn, randomness="error")(*stacked)


def is_vmap_error(err: BaseException) -> bool:
    """Whether ``err`` says an operation or model cannot run under ``vmap`` (not a bug to re-raise)."""
    text = str(err).lower()
    return isinstance(err, (RuntimeError, NotImplementedError)) and any(
        key in text for key in ("vmap", "batching rule", "batched tensor", "functorch", "randomness"))


class HasBatches(Protocol):
    """An episode as the task runner reads it (:class:`metalm.data.Episode`)."""

    support: Batch
    query: Batch


class TaskGroups:
    """Run a per-task function over a meta-batch: same-shape episodes together under ``vmap``, the rest
    one by one.

    With ``vmap`` on, episodes with the same numbers of support and query rows (a classification
    task's N-way K-shot episode has N*K support rows, other tasks' K) run together, ``chunk`` at a
    time (0: all); a lone episode, or a group that cannot, runs one task at a time (a task dim of
    1). A model that does not run under ``vmap`` is warned about once, the reason kept in
    :attr:`failure`, and looped from then on.

    Args:
        model: The model the per-task function runs (for the stacked batches' attention masks).
        vmap: Whether to batch tasks with ``torch.func.vmap``.
        chunk: Tasks per ``vmap`` call (0: the whole group).
    """

    def __init__(self, model: nn.Module, vmap: bool, chunk: int = 0) -> None:
        self.model, self.vmap, self.chunk = model, vmap, chunk
        self.failure: str | None = None

    def __call__(self, fn: Callable[[Batch, Batch], Any], episodes: Sequence[HasBatches]) -> Iterator[Any]:
        """Yield ``fn(support, query)`` for the episodes, outputs stacked along a leading task dim. A
        consumer that runs ``backward`` on each item before taking the next keeps one group's graph
        alive at a time."""
        shapes: dict[tuple[int, int], list[HasBatches]] = {}
        for ep in episodes:
            key = (ep.support["input_ids"].shape[0], ep.query["input_ids"].shape[0]) if self.vmap else (0, 0)
            shapes.setdefault(key, []).append(ep)
        size = (self.chunk or len(episodes)) if self.vmap else 1
        for same in shapes.values():
            for start in range(0, len(same), size):
                group = same[start:start + size]
                stacked = self.together(fn, group)
                if stacked is not None:
                    yield stacked
                    continue
                for ep in group:
                    yield tree_map(lambda t: t.unsqueeze(0), fn(ep.support, ep.query))

    def together(self, fn: Callable[[Batch, Batch], Any], episodes: Sequence[HasBatches]) -> Any | None:
        """``fn`` run for every episode at once under ``vmap``, or ``None`` when the caller should loop:
        ``vmap`` is off or failed before, there is a single episode, or the row counts differ."""
        if not self.vmap or self.failure is not None or len(episodes) < 2:
            return None
        supports = stack_batches([ep.support for ep in episodes], self.model)
        queries = stack_batches([ep.query for ep in episodes], self.model)
        if supports is None or queries is None:
            return None
        try:
            return vmap_tasks(fn, supports, queries)
        except (RuntimeError, NotImplementedError) as err:
            if not is_vmap_error(err):
                raise
            self.failure = str(err).splitlines()[0][:300]
            warnings.warn(f"inner.vmap: this model does not run under torch.func.vmap ({self.failure}); "
                          "running the tasks one by one", RuntimeWarning, stacklevel=4)
            return None
