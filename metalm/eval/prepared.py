"""Scoring many sets of fast weights on the same queries: the frozen layers run once.

Evaluation scores the same query examples with many weights (the pretrained ones, each
fine-tuned or meta-learned initialization after adaptation, every point of a fine-tuning grid).
When nothing below decoder layer ``L0`` is adapted or meta-learned, layers ``0..L0-1`` give the
same hidden states for all of them. :func:`prepare_queries` runs the whole model once, as
:func:`metalm.eval.option_scores` does (each prompt once, its options on the prompt's KV cache),
and keeps the input of layer ``L0`` for every prompt + option row; :func:`score_prepared` then
runs only layers ``L0..N-1`` (with any fast weights) on those rows. The scores equal
:func:`~metalm.eval.option_scores` (a test checks both on GPT-2 and Llama).

The upper layers take the arguments (attention mask, rotary embeddings) that the model gives its
first layer for the full rows, so this needs a model whose layers all take the same ones; models
that mix attention types (sliding-window layers) are detected and scored the plain way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..data.collate import CollateConfig
from ..data.episode import Example
from ..losses import IGNORE_INDEX, PrefixCache, target_logits
from ..models import causal_lm, decoder_layers
from .scoring import (
    _pad_id,
    _PromptThenOptions,
    _scores_shared,
    chunks_by_option_count,
    option_logprobs,
    pad_rows,
    token_rows,
)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted arguments are recorded."""


@dataclasses.dataclass
class _Chunk:
    indices: list[int]  # examples of this chunk
    n: int  # options per example
    batch: dict[str, Any]  # rows [len(indices) * n, Tp + To] with the prefix cache
    o_ids: Tensor
    o_mask: Tensor


@dataclasses.dataclass
class PreparedQueries:
    """Query examples with their frozen layers computed (:func:`prepare_queries`)."""

    size: int
    chunks: list[_Chunk]


def _uniform(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return a is b
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_uniform(x, y) for x, y in zip(a, b, strict=True))
    return a is b or a == b


@torch.no_grad()
def prepare_queries(model: nn.Module, params: Mapping[str, Tensor], examples: Sequence[Example], tokenizer,  # noqa: ANN001
                    config: CollateConfig, layer: int | None, *, batch_size: int = 32,
                    normalize: str = "mean") -> tuple[list[list[float]], PreparedQueries | None]:
    """Score ``examples`` with ``params`` and keep what the layers below ``layer`` computed.

    Args:
        model: The (PEFT-wrapped) causal LM.
        params: Tensors to score with now (e.g. the pretrained fast weights); nothing below
            ``layer`` may be among them.
        examples: Examples with options (rank classification).
        layer: The lowest decoder layer holding an adapted or meta-learned tensor.

    Returns:
        The scores (as :func:`~metalm.eval.option_scores`) and the prepared queries, or ``None``
        when there is nothing to reuse (``layer`` is ``None`` or 0, or the model's layers take
        different arguments).
    """
    name, n_layers = decoder_layers(model)
    if not layer or layer >= n_layers:
        return _scores_shared(model, params, examples, tokenizer, config, normalize, batch_size), None
    layers = model.get_submodule(name)
    device = next(model.parameters()).device
    swapped = {f"m.{k}": v for k, v in params.items()}
    scores: list[list[float]] = [[] for _ in examples]
    chunks: list[_Chunk] = []
    uniform = True
    if any(ex.context for ex in examples):
        raise ValueError("prepare_queries takes examples without a shared context")
    rows = token_rows(examples, tokenizer, config.max_length)
    for n, idx in chunks_by_option_count(rows, batch_size):
        p_ids, p_mask, o_ids, o_mask = (t.to(device) for t in pad_rows([rows[i] for i in idx], _pad_id(tokenizer)))
        seen: list[Tensor] = []
        calls: dict[int, dict[str, Any]] = {}
        handles = [layers[i].register_forward_pre_hook(_grabber(i, layer, seen, calls), with_kwargs=True)
                   for i in (0, layer)]
        try:
            logits = functional_call(_PromptThenOptions(model), swapped, (p_ids, p_mask, o_ids, o_mask, n),
                                     strict=False)
        finally:
            for h in handles:
                h.remove()
        for i, row in zip(idx, option_logprobs(logits, o_ids, o_mask, normalize).view(len(idx), n).tolist(),
                          strict=True):
            scores[i] = row
        # Layers taking other arguments than the first one (e.g. sliding-window attention): no reuse.
        uniform = uniform and calls[0].keys() == calls[layer].keys() and all(
            _uniform(calls[0][k], calls[layer][k]) for k in calls[0] if k not in ("past_key_values", "cache"))
        if not uniform:
            continue
        prompt_h, option_h = seen  # inputs of layer L0: prompts, then options on the prompts' cache
        ids = torch.cat([p_ids.repeat_interleave(n, 0), o_ids], 1)
        mask = torch.cat([p_mask.repeat_interleave(n, 0), o_mask], 1)
        hidden = torch.cat([prompt_h.repeat_interleave(n, 0), option_h], 1)
        width = p_ids.shape[1]
        targets = torch.where(o_mask.bool(), o_ids, torch.full_like(o_ids, IGNORE_INDEX))
        positions = (width - 1 + torch.arange(o_ids.shape[1], device=device)).expand_as(o_ids)
        args, kwargs, by_keyword = _layer_arguments(model, layers, ids, mask)
        prefix = PrefixCache(layer, hidden, [(args, kwargs, by_keyword)] * (n_layers - layer), name)
        batch = {"input_ids": ids, "attention_mask": mask, "target_positions": positions, "target_ids": targets,
                 "prefix_cache": prefix}
        chunks.append(_Chunk(idx, n, batch, o_ids, o_mask))
    return scores, (PreparedQueries(len(examples), chunks) if uniform else None)


def _grabber(i: int, layer: int, seen: list[Tensor], calls: dict[int, dict[str, Any]]):  # noqa: ANN202
    """A pre-hook of layer ``i``: keeps layer ``layer``'s input hidden states (one per forward) and the
    other arguments of each hooked layer's first call."""

    def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if i == layer:
            seen.append(kwargs["hidden_states"] if not args else args[0])
        if not calls.get(i):
            calls[i] = {k: v for k, v in kwargs.items() if k != "hidden_states"} | {"_args": args[1:]}

    return grab


def _layer_arguments(model: nn.Module, layers: nn.ModuleList, ids: Tensor,
                     mask: Tensor) -> tuple[tuple[Any, ...], dict[str, Any], bool]:
    """The arguments the model gives its first decoder layer for rows ``ids`` (no layer is run)."""
    lm = causal_lm(model)
    backbone = getattr(lm, lm.base_model_prefix)
    got: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def stop(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        got.append((args, dict(kwargs)))
        raise _Stop

    handle = layers[0].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        backbone(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    args, kwargs = got[0]
    if not args:
        return (), {k: v for k, v in kwargs.items() if k != "hidden_states"}, True
    return args[1:], kwargs, False


@torch.no_grad()
def score_prepared(model: nn.Module, params: Mapping[str, Tensor], prepared: PreparedQueries,
                   normalize: str = "mean") -> list[list[float]]:
    """Option scores of the prepared queries with ``params`` (tensors of layers ``L0`` and above)."""
    out: list[list[float]] = [[] for _ in range(prepared.size)]
    for chunk in prepared.chunks:
        logits = target_logits(model, params, chunk.batch)  # [R, To, V]
        rows = option_logprobs(logits, chunk.o_ids, chunk.o_mask, normalize).view(len(chunk.indices), chunk.n)
        for i, row in zip(chunk.indices, rows.tolist(), strict=True):
            out[i] = row
    return out
