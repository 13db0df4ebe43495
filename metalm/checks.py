"""Argument checks of the public Python API: a bad call is one metalm error naming the argument.

``metalm.adapt`` and the losses receive batches and parameter dicts built by user code; without
these checks a float ``input_ids``, a token id past the vocabulary or a weight of the wrong shape
surface as a torch error deep in the model (on CUDA an out-of-range id is a device-side assert
that ends the process), or not at all (a target token under a zero attention mask is scored
silently). The cheap checks (types, dtypes, shapes) run on every call; the ones that read values
(:func:`check_token_values`) once per inner loop, outside ``vmap``.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .errors import BatchError, ConfigError

IGNORE_INDEX = -100
_INT = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_batch_structure(batch: Any, where: str) -> None:
    """``batch`` is a mapping with integer ``input_ids`` and ``labels`` ``[B, T]`` and, if present, an
    ``attention_mask`` of the same shape (integer, bool or float).

    Raises:
        BatchError: Naming ``where`` and the key at fault.
    """
    if not isinstance(batch, Mapping):
        raise BatchError(f"{where}: must be a mapping of tensors (input_ids, attention_mask, labels), "
                         f"got {type(batch).__name__}")
    for key in ("input_ids", "labels"):
        if key not in batch:
            raise BatchError(f"{where}: missing {key!r} (have {sorted(map(str, batch))})")
    for key in ("input_ids", "labels", "attention_mask"):
        value = batch.get(key)
        if value is None and key == "attention_mask":
            continue
        if not isinstance(value, Tensor):
            raise BatchError(f"{where}: {key} must be a tensor, got {type(value).__name__}")
        if key != "attention_mask" and value.dtype not in _INT:
            raise BatchError(f"{where}: {key} must hold integer token ids, got {value.dtype}")
    ids, labels = batch["input_ids"], batch["labels"]
    if ids.dim() != 2 or labels.shape != ids.shape:
        raise BatchError(f"{where}: input_ids {tuple(ids.shape)} and labels {tuple(labels.shape)} must both be [B, T]")
    mask = batch.get("attention_mask")
    if mask is not None and mask.shape != ids.shape:
        raise BatchError(f"{where}: attention_mask {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise BatchError(f"{where}: empty batch (input_ids {tuple(ids.shape)})")


def check_token_values(batch: Mapping[str, Tensor], vocab: int | None, where: str) -> None:
    """Token ids in ``[0, vocab)``, labels in it or ``-100``, a 0/1 attention mask that attends every
    target token (reads the values: one device sync).

    Raises:
        BatchError: Naming ``where``, the key and the offending value.
    """
    ids, labels, mask = batch["input_ids"], batch["labels"], batch.get("attention_mask")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab is not None and high >= vocab):
        bad = low if low < 0 else high
        raise BatchError(f"{where}: input_ids holds {bad}, outside the model's vocabulary [0, {vocab})")
    targets = labels != IGNORE_INDEX
    if bool(targets.any()):
        chosen = labels[targets]
        low, high = int(chosen.min()), int(chosen.max())
        if low < 0 or (vocab is not None and high >= vocab):
            bad = low if low < 0 else high
            raise BatchError(f"{where}: labels holds {bad}: a label is a token id in [0, {vocab}) or -100 "
                             "(no loss)")
    if mask is not None:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise BatchError(f"{where}: attention_mask must hold 0 and 1 only")
        if bool((targets & (mask == 0)).any()):
            raise BatchError(f"{where}: a target token (labels != -100) sits where attention_mask is 0")


def vocabulary_size(model: nn.Module) -> int | None:
    """The model's input vocabulary (rows of its input embedding), or ``None`` if it has none."""
    try:
        return int(model.get_input_embeddings().num_embeddings)  # type: ignore[operator]
    except (AttributeError, NotImplementedError, TypeError):
        return None


def check_weights(model: nn.Module, weights: Any, argument: str) -> None:
    """``weights`` maps names of the model's parameters or buffers to floating tensors of their
    shape and dtype (what ``torch.func.functional_call`` swaps in).

    Raises:
        ConfigError: Naming ``argument`` and the tensor at fault.
    """
    if not isinstance(weights, Mapping):
        raise ConfigError(argument, f"must be a dict of tensors by parameter name, got {type(weights).__name__}")
    own = dict(model.named_parameters(remove_duplicate=False))
    own.update(model.named_buffers(remove_duplicate=False))
    for name, value in weights.items():
        if name not in own:
            close = difflib.get_close_matches(str(name), list(own), n=1)
            hint = f" (closest: {close[0]!r})" if close else ""
            raise ConfigError(f"{argument}[{name}]", f"the model has no parameter of this name{hint}")
        check_like(value, own[name], f"{argument}[{name}]", "the model's")


def check_like(value: Any, ref: Tensor, field: str, owner: str) -> None:
    """``value`` is a floating tensor of ``ref``'s shape and dtype.

    Raises:
        ConfigError: Naming ``field`` (and ``owner``, whose tensor ``ref`` is).
    """
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise ConfigError(field, f"must be a floating tensor, got {getattr(value, 'dtype', type(value).__name__)}")
    if value.shape != ref.shape or value.dtype != ref.dtype:
        raise ConfigError(field, f"{value.dtype} {tuple(value.shape)} does not match {owner} {ref.dtype} "
                                 f"{tuple(ref.shape)}")


def check_number(value: Any, argument: str, *, low: float = 0.0, strict: bool = False, integer: bool = False,
                 high: float | None = None) -> None:
    """A real number (an ``int`` if ``integer``; never a bool) with ``value >= low`` (``>`` if
    ``strict``) and ``value < high`` when given; finite.

    Raises:
        ConfigError: Naming ``argument``.
    """
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ConfigError(argument, f"must be a finite {'integer' if integer else 'number'}, got {value!r}")
    if value < low or (strict and value == low) or (high is not None and value >= high):
        bound = f"{'>' if strict else '>='} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise ConfigError(argument, f"must be {bound}, got {value!r}")
