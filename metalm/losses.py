"""The causal-LM loss on target tokens, computing logits only where a target is.

A batch is a dict with ``input_ids`` ``[B, T]``, ``attention_mask`` ``[B, T]`` and ``labels``
``[B, T]`` (``-100`` where there is no loss), aligned with ``input_ids`` as in transformers: the
logit at position ``t`` predicts ``labels[:, t + 1]``. Projecting every position onto a 49k-token
vocabulary is most of a small LM's forward cost, so the backbone runs once and the output head
runs only on the ``M`` target positions of each row.

:func:`prepare_batch` adds ``target_positions`` / ``target_ids`` ``[B, M]`` once per batch (``M``
= most targets in a row; padding entries have id ``-100``). Their shapes depend only on the batch,
so equal-shaped episodes stay stackable for ``torch.func.vmap``.

:func:`metalm.batching.stack_batches` adds ``dense_mask`` ``[B, 1, T, T]``, a ready attention mask the
model uses instead of building one from ``attention_mask`` (which ``vmap`` cannot run).

:func:`cache_prefix` adds a frozen-prefix cache: when nothing below decoder layer ``L0`` is adapted
or meta-learned, the input of layer ``L0`` (and the arguments the model passes its upper layers)
is computed once per batch without gradient, and every later loss on that batch runs only layers
``L0..N-1``: the same values and gradients, at a fraction of the cost.

:func:`split_by_length` adds ``parts``: the rows of a batch whose lengths differ widely, regrouped by
length and each group trimmed to its longest row, with each group's share of the target tokens
(``weights``). :func:`lm_loss` then sums the groups' losses by those shares: the same mean over the
batch's target tokens without computing the padding (a few long rows no longer pad every other row
to their length). The batch's own tensors stay, for whatever reads the rows as a whole.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .checks import check_batch_structure, check_token_values, vocabulary_size
from .errors import BatchError, MetalmError
from .models import causal_lm, decoder_layers

Batch = Mapping[str, Tensor]
IGNORE_INDEX = -100
PAD_WASTE = 0.25
"""Most padding a group of rows (a scoring chunk, a part of a split batch) may hold beyond its real
tokens, as a fraction of them, plus :data:`PAD_SLACK` tokens per row so short rows still go together."""
PAD_SLACK = 32


def length_groups(lengths: list[int], widths: list[int] | None = None, most: int | None = None) -> list[list[int]]:
    """Row indices sorted by length and cut into groups whose padded size (rows x the longest, ``widths``
    giving each row's padded cost when it differs from its length) stays within :data:`PAD_WASTE` of
    their real tokens plus :data:`PAD_SLACK` per row, with at most ``most`` rows a group; a row alone
    is always a group."""
    widths = widths if widths is not None else lengths
    groups: list[list[int]] = []
    group: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (widths[i], i)):
        grown = group + [i]
        real = sum(lengths[j] for j in grown)
        padded = len(grown) * max(widths[j] for j in grown)
        if group and ((most is not None and len(grown) > most)
                      or padded > (1 + PAD_WASTE) * real + PAD_SLACK * len(grown)):
            groups.append(group)
            grown = [i]
        group = grown
    return groups + ([group] if group else [])


def split_by_length(batch: Batch) -> dict[str, Any]:
    """``batch`` (right-padded ``input_ids``, ``attention_mask``, ``labels`` ``[B, T]``) with ``parts``:
    its rows grouped by length (:func:`length_groups`), each group trimmed to its longest row and
    prepared (rows without a target left out), and ``weights``, each group's share of the target tokens
    (module doc). A batch that gains nothing (one group), is left-padded or has no mask comes back
    prepared without parts."""
    batch = prepare_batch(batch)
    mask = batch.get("attention_mask")
    if mask is None or "prefix_cache" in batch or "dense_mask" in batch or bool((mask[:, 0] == 0).any()):
        return batch
    lengths = mask.sum(1).tolist()
    groups = length_groups(lengths)
    if len(groups) == 1:
        return batch
    parts, counts = [], []
    for rows in groups:
        index = torch.tensor(rows, device=mask.device)
        width = max(lengths[i] for i in rows)
        part = {k: batch[k].index_select(0, index)[:, :width] for k in ("input_ids", "attention_mask", "labels")}
        count = int((part["labels"][:, 1:] != IGNORE_INDEX).sum())
        if count:  # rows without a target add nothing to the loss
            counts.append(count)
            parts.append(prepare_batch(part))
    total = sum(counts)
    return {**batch, "parts": parts, "weights": [c / total for c in counts]}


def prepare_batch(batch: Batch, where: str = "batch", vocab: int | None = None) -> dict[str, Tensor]:
    """Check a batch and add ``target_positions`` and ``target_ids`` (both ``[B, M]``).

    Raises:
        BatchError: On a missing key, mismatched shapes or a batch without any target token.
    """
    if isinstance(batch, Mapping) and "target_positions" in batch and "target_ids" in batch:
        return dict(batch)
    if isinstance(batch, Mapping) and "parts" in batch:
        return {**batch, "parts": [prepare_batch(p, where, vocab) for p in batch["parts"]]}
    check_batch_structure(batch, where)
    check_token_values(batch, vocab, where)
    ids, labels = batch["input_ids"], batch["labels"]
    shifted = labels[:, 1:]
    has_target = shifted != IGNORE_INDEX
    per_row = has_target.sum(1)
    m = int(per_row.max()) if per_row.numel() else 0
    if m == 0:
        raise BatchError(f"{where}: no target tokens (labels are all -100 after the first position)")
    # Stable sort puts each row's target positions first, in order; the rest are padding.
    order = torch.sort((~has_target).to(torch.int8), dim=1, stable=True).indices[:, :m]
    valid = torch.arange(m, device=ids.device).unsqueeze(0) < per_row.unsqueeze(1)
    out = dict(batch)
    out["target_positions"] = order
    out["target_ids"] = torch.where(valid, shifted.gather(1, order), torch.full_like(order, IGNORE_INDEX))
    return out


class _TargetHead(nn.Module):
    """Backbone over every position, output head over the target positions only.

    Holds the model as its child ``m`` so that ``functional_call`` can swap any of its tensors
    (tied embeddings stay tied); the model itself is not modified.
    """

    def __init__(self, model: nn.Module, head: bool = True) -> None:
        super().__init__()
        self.m, self.head = model, head

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, positions: Tensor,
                prefix: PrefixCache | None = None, dense_mask: Tensor | None = None,
                head: bool | None = None) -> Tensor:
        lm = causal_lm(self.m)
        backbone = getattr(lm, lm.base_model_prefix)
        if prefix is not None:
            hidden = _final_norm(backbone)(_run_upper(self.m, prefix))
        else:
            # Positions count real tokens, so left-padded rows get the same positions as unpadded ones.
            position_ids = None if attention_mask is None else (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            hidden = backbone(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                              attention_mask=attention_mask if dense_mask is None else dense_mask).last_hidden_state
        picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))  # [B, M, H]
        return output_logits(lm, picked) if (self.head if head is None else head) else picked


SHARDED_ROOT = "_metalm_sharded_root"


def _target_head(model: nn.Module) -> nn.Module:
    """The module :func:`target_logits` calls: a fresh :class:`_TargetHead` over ``model``, or the
    persistent one that :func:`metalm.sharding.shard_model` made FSDP2's root (its hooks gather the
    embeddings, final norm and output head)."""
    return model.__dict__.get(SHARDED_ROOT) or _TargetHead(model)


def output_logits(lm: nn.Module, hidden: Tensor) -> Tensor:
    """The causal LM's output head on final hidden states ``[..., H]`` -> ``[..., V]`` (with the final
    logit soft-capping some architectures apply, e.g. Gemma 2)."""
    logits = lm.get_output_embeddings()(hidden)
    cap = getattr(lm.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


@dataclasses.dataclass
class PrefixCache:
    """Decoder layers below ``layer``, computed once.

    Attributes:
        layer: The first decoder layer that is run (``L0``).
        hidden: The input of layer ``L0``, ``[B, T, H]`` (no gradient).
        calls: For each layer ``L0..N-1``: the positional arguments after the hidden states and the
            keyword arguments the model passed it (attention mask, rotary embeddings ...), and
            whether the hidden states came by keyword.
        layers_name: Dotted name of the decoder-layer list in the model (found once, not per step).
    """

    layer: int
    hidden: Tensor
    calls: list[tuple[tuple[Any, ...], dict[str, Any], bool]]
    layers_name: str


def _final_norm(backbone: nn.Module) -> nn.Module:
    for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
        module = getattr(backbone, name, None)
        if isinstance(module, nn.Module):
            return module
    raise MetalmError(f"frozen-prefix cache: cannot find the final norm of {type(backbone).__name__}; "
                      "set inner.cache_prefix: false")


def _run_upper(model: nn.Module, prefix: PrefixCache) -> Tensor:
    """Decoder layers ``L0..N-1`` on the cached input of ``L0`` (before the final norm), ``[B, T, H]``."""
    layers = model.get_submodule(prefix.layers_name)
    hidden = prefix.hidden
    for i, (args, kwargs, by_keyword) in enumerate(prefix.calls):
        layer = layers[prefix.layer + i]
        out = layer(*args, hidden_states=hidden, **kwargs) if by_keyword else layer(hidden, *args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def cache_prefix(model: nn.Module, batch: Batch, layer: int | None) -> dict[str, Any]:
    """The batch with a frozen-prefix cache (``prefix_cache``) from one no-grad forward pass.

    Valid only while the tensors of the decoder layers below ``layer`` (and the embeddings) keep their
    values: use ``ParameterSelection.lowest_adapted_layer()``. ``layer`` ``None`` or ``0`` returns
    the prepared batch without a cache.

    Args:
        model: The (PEFT-wrapped) causal LM.
        batch: A batch as :func:`lm_loss` takes it.
        layer: The lowest decoder layer holding an adapted or meta-learned tensor.
    """
    batch = prepare_batch(batch)
    if isinstance(batch, Mapping) and "parts" in batch:
        return {**batch, "parts": [cache_prefix(model, p, layer) for p in batch["parts"]]}
    name, n_layers = decoder_layers(model)
    if not layer or layer >= n_layers or "prefix_cache" in batch:
        return batch
    layers = model.get_submodule(name)
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append((args, dict(kwargs)))

    handles = [layers[i].register_forward_pre_hook(record, with_kwargs=True) for i in range(layer, n_layers)]
    try:
        with torch.no_grad():
            _TargetHead(model, head=False)(*_head_args(batch))
    finally:
        for h in handles:
            h.remove()
    args, kwargs = calls[0]
    by_keyword = not args
    hidden = kwargs["hidden_states"] if by_keyword else args[0]
    stripped = [(a, {k: v for k, v in kw.items() if k != "hidden_states"}, by_keyword) if by_keyword
                else (a[1:], kw, by_keyword) for a, kw in calls]
    return {**batch, "prefix_cache": PrefixCache(layer, hidden.detach(), stripped, name)}


def reusable_batch(model: nn.Module, batch: Batch, layer: int | None, uses: int) -> dict[str, Any]:
    """``batch`` prepared for ``uses`` passes: with a frozen-prefix cache (:func:`cache_prefix`) below
    ``layer`` when it will be run at least twice (an inner loop's steps), else only prepared (a single
    pass gains nothing from a cache; target positions are still found once, outside any compiled loss)."""
    return cache_prefix(model, batch, layer) if uses >= 2 else prepare_batch(batch)


def _head_args(batch: Batch) -> tuple[Any, ...]:
    return (batch["input_ids"], batch.get("attention_mask"), batch["target_positions"], batch.get("prefix_cache"),
            batch.get("dense_mask"))


def target_logits(model: nn.Module, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
    """Logits at the target positions, ``[B, M, V]``, with ``params`` swapped into the model.

    Args:
        model: The (PEFT-wrapped) causal LM; not modified.
        params: Tensors by ``model.named_parameters()`` name to use instead of the model's own.
        batch: A batch that went through :func:`prepare_batch`.
    """
    swapped = {f"m.{k}": v for k, v in params.items()}
    return functional_call(_target_head(model), swapped, _head_args(batch), strict=False)


def target_hidden(model: nn.Module, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
    """Final hidden states at the target positions, ``[B, M, H]`` (the input of the output head).

    Task-specific heads (:class:`metalm.algorithms.Multitask` with ``heads: task``) read the first
    one, the position that predicts the answer's first token.
    """
    swapped = {f"m.{k}": v for k, v in params.items()}
    return functional_call(_target_head(model), swapped, _head_args(batch), {"head": False}, strict=False)


def _upcast(logits: Tensor) -> Tensor:
    # bf16/fp16 logits lose too much in log-softmax; fp32 and fp64 are kept as they are.
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def lm_loss(model: nn.Module, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
    """Mean cross-entropy over all target tokens of the batch (a scalar); of a batch with ``parts``
    (:func:`split_by_length`), the parts' losses weighted by their shares of the target tokens."""
    if isinstance(batch, Mapping) and "parts" in batch:
        return sum(w * lm_loss(model, params, p) for w, p in zip(batch["weights"], batch["parts"], strict=True))
    batch = prepare_batch(batch, vocab=vocabulary_size(model))
    logits = target_logits(model, params, batch)
    return F.cross_entropy(_upcast(logits).flatten(0, 1), batch["target_ids"].flatten(), ignore_index=IGNORE_INDEX)


def lm_loss_and_accuracy(model: nn.Module, params: Mapping[str, Tensor], batch: Batch) -> tuple[Tensor, Tensor]:
    """The loss of :func:`lm_loss` and the token accuracy (argmax) at the target positions."""
    if isinstance(batch, Mapping) and "parts" in batch:
        pairs = [lm_loss_and_accuracy(model, params, p) for p in batch["parts"]]
        return (sum(w * loss for w, (loss, _) in zip(batch["weights"], pairs, strict=True)),
                sum(w * acc for w, (_, acc) in zip(batch["weights"], pairs, strict=True)))
    batch = prepare_batch(batch, vocab=vocabulary_size(model))
    logits = target_logits(model, params, batch)
    targets = batch["target_ids"]
    loss = F.cross_entropy(_upcast(logits).flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    valid = targets != IGNORE_INDEX
    correct = (logits.argmax(-1) == targets) & valid
    return loss, correct.sum() / valid.sum()


@functools.cache
def compiled_lm_loss() -> Any:
    """:func:`lm_loss` through ``torch.compile`` (dynamic shapes), built once per process: the support
    loss of first-order inner loops with ``inner.compile``."""
    return torch.compile(lm_loss, dynamic=True)


def proximal_loss(anchor: Mapping[str, Tensor], lam: float, loss_fn: Any = None) -> Any:
    """``loss_fn`` (default :func:`lm_loss`) plus ``lam/2 ||params - anchor||^2`` over the anchored
    tensors: the proximally regularized task loss of iMAML (Rajeswaran et al. 2019) and of
    ``inner.proximal``."""
    base = lm_loss if loss_fn is None else loss_fn

    def loss(model: nn.Module, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        prox = sum(((params[n] - a) ** 2).sum() for n, a in anchor.items())
        return base(model, params, batch) + 0.5 * lam * prox

    return loss
