"""Scoring adapted weights on query examples: rank classification and greedy generation.

Rank classification scores each candidate answer by its log-likelihood after the prompt (mean
per answer token by default, so long labels are not penalized), computing logits only at the
answer positions. Generation decodes greedily and is scored by exact match and token F1 against
the references (normalized: lower case, punctuation and articles removed, as in SQuAD).
"""

from __future__ import annotations

import copy
import inspect
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..data.collate import CollateConfig, pad_sequences
from ..data.episode import Example
from ..errors import BatchError, ConfigError
from ..losses import IGNORE_INDEX, length_groups, output_logits, prepare_batch, target_logits
from ..models import causal_lm


class _PromptThenOptions(nn.Module):
    """Encode a shared context once (optional), each prompt once on it, then every option of each
    prompt on the prompt's KV cache.

    Holds the model as child ``m`` so ``functional_call`` can swap fast weights in. Prompts are
    left-padded (so their last column is real; after a context the padding sits between context and
    prompt), options right-padded; positions count real tokens.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, p_ids: Tensor, p_mask: Tensor, o_ids: Tensor, o_mask: Tensor, n: int,
                c_ids: Tensor | None = None, c_cache: Any = None) -> Tensor:
        lm = causal_lm(self.m)
        backbone = getattr(lm, lm.base_model_prefix)
        extra: dict[str, Any] = {}
        if c_ids is not None:  # [1, Tc]: its cache (given, or computed here) copied to every prompt
            c_mask = torch.ones_like(c_ids)
            cache = copy.deepcopy(c_cache) if c_cache is not None else _encode(backbone, c_ids)
            cache.batch_repeat_interleave(p_ids.shape[0])
            extra = {_cache_kwarg(backbone): cache}
            p_mask = torch.cat([c_mask.expand(p_ids.shape[0], -1), p_mask], 1)
        positions = (p_mask.cumsum(-1) - 1).clamp(min=0)[:, p_mask.shape[1] - p_ids.shape[1]:]
        out = backbone(input_ids=p_ids, attention_mask=p_mask, position_ids=positions, use_cache=True, **extra)
        cache = _cache_of(out)
        cache.batch_repeat_interleave(n)
        p_mask = p_mask.repeat_interleave(n, 0)
        # Padding after a short option repeats its last position (never past the context).
        positions = p_mask.sum(-1, keepdim=True) + torch.minimum(
            torch.arange(o_ids.shape[1], device=o_ids.device), (o_mask.sum(-1, keepdim=True) - 1).clamp(min=0))
        hidden = backbone(input_ids=o_ids, attention_mask=torch.cat([p_mask, o_mask], 1), position_ids=positions,
                          use_cache=True, **{_cache_kwarg(backbone): cache}).last_hidden_state
        # Option token j is predicted at option position j - 1, the first one at the prompt's last token.
        first = out.last_hidden_state[:, -1:].repeat_interleave(n, 0)
        return output_logits(lm, torch.cat([first, hidden[:, :-1]], 1))  # [B*n, L, V]


class _Context(nn.Module):
    """The KV cache of a shared context ``[1, Tc]`` (holds the model as child ``m``, as above)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, c_ids: Tensor) -> Any:
        lm = causal_lm(self.m)
        return _encode(getattr(lm, lm.base_model_prefix), c_ids)


def _encode(backbone: nn.Module, c_ids: Tensor) -> Any:
    c_mask = torch.ones_like(c_ids)
    out = backbone(input_ids=c_ids, attention_mask=c_mask, position_ids=c_mask.cumsum(-1) - 1, use_cache=True)
    return _cache_of(out)


def _cache_of(out: Any) -> Any:
    return getattr(out, "cache", None) or out.past_key_values  # transformers >= 5.2x renamed it "cache"


def _cache_kwarg(backbone: nn.Module) -> str:
    """The name under which this transformers version's backbone takes a KV cache."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


class _NextToken(nn.Module):
    """Logits of the next token after ``ids`` ``[B, T]``, continuing a KV cache (``None`` at first).

    Holds the model as child ``m`` so ``functional_call`` can swap fast weights in; returns
    ``(logits [B, V], cache)``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> tuple[Tensor, Any]:
        lm = causal_lm(self.m)
        backbone = getattr(lm, lm.base_model_prefix)
        kwargs = {} if cache is None else {_cache_kwarg(backbone): cache}
        out = backbone(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        return output_logits(lm, out.last_hidden_state[:, -1]), _cache_of(out)


TokenRow = tuple[list[int], list[int], list[list[int]]]  # context, prompt, options (token ids)


def _cut(ids: list[int], keep: int, bos: int | None) -> list[int]:
    """The last ``keep`` tokens of ``ids``, the start token (BOS) kept first when there is one."""
    if len(ids) <= keep:
        return ids
    if keep <= 0:
        return []
    return ids[:1] + ids[len(ids) - keep + 1:] if ids[0] == bos else ids[len(ids) - keep:]


def token_rows(examples: Sequence[Example], tokenizer, max_length: int) -> list[TokenRow]:  # noqa: ANN001
    """Token ids of each example's context, prompt and options, cut to fit ``max_length``.

    Options are never cut. Without a context, a prompt loses its oldest tokens (not its BOS) when
    prompt + its longest option exceed ``max_length``. The examples sharing a context (the same
    string) share one cut of it, set by the longest prompt + option among them: the oldest context
    tokens go first (its BOS kept), then, only if nothing of the context is left, prompts' oldest
    tokens. An example's tokens therefore depend on it and the examples sharing its context only,
    never on how a call batches them.
    """
    bos = tokenizer.bos_token_id
    opts = [[tokenizer(o, add_special_tokens=False)["input_ids"] for o in ex.options] for ex in examples]
    longest = [max((len(t) for t in row), default=0) for row in opts]
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.context, []).append(i)
    out: list[TokenRow | None] = [None] * len(examples)
    for context, idx in groups.items():
        if not context:
            for i in idx:
                prompt = tokenizer(examples[i].prompt, add_special_tokens=True)["input_ids"]
                out[i] = ([], _cut(prompt, max(1, max_length - longest[i]), bos), opts[i])
            continue
        ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
        prompts = {i: tokenizer(examples[i].prompt, add_special_tokens=False)["input_ids"] for i in idx}
        need = max(len(prompts[i]) + longest[i] for i in idx)
        ctx = _cut(ctx, max(max_length - need, 1 if ctx and ctx[0] == bos else 0), bos)
        for i in idx:
            keep = max(1, max_length - len(ctx) - longest[i])
            out[i] = (ctx, prompts[i][-keep:] if len(prompts[i]) > keep else prompts[i], opts[i])
    return out  # type: ignore[return-value]


def pad_rows(rows: Sequence[TokenRow], pad: int) -> tuple[Tensor, ...]:
    """Prompts (context excluded) left-padded and options right-padded, for rows with ``n`` options each.

    Returns:
        ``p_ids``, ``p_mask`` ``[B, Tp]`` and ``o_ids``, ``o_mask`` ``[B * n, To]`` (option ``j`` of
        row ``i`` in row ``i * n + j``).
    """
    p_ids, p_mask = pad_sequences([p for _, p, _ in rows], pad, "left")
    o_ids, o_mask = pad_sequences([t for _, _, opts in rows for t in opts], pad, "right")
    return p_ids, p_mask, o_ids, o_mask


def _pad_id(tokenizer) -> int:  # noqa: ANN001
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def option_logprobs(logits: Tensor, o_ids: Tensor, o_mask: Tensor, normalize: str) -> Tensor:
    """Per-row option score from logits at the option positions ``[R, To, V]``: the sum (or mean) of
    the option tokens' log-probabilities, ``[R]``."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logp = torch.log_softmax(logits, -1).gather(-1, o_ids.unsqueeze(-1)).squeeze(-1)
    total = (logp * o_mask).sum(1)
    return total / o_mask.sum(1) if normalize == "mean" else total


def chunks_by_option_count(rows: Sequence[TokenRow], batch_size: int) -> list[tuple[int, list[int]]]:
    """Indices of ``rows`` (:func:`token_rows`) grouped by option count ``n``, sorted by length and cut
    into chunks of at most ``batch_size`` rows (prompt x option) by :func:`metalm.losses.length_groups`:
    a row's padded width is its prompt + ``n`` x its longest option, and a chunk pads every row to the
    widest (prompts of one task can differ tenfold in length). A row's score does not depend on its
    chunk (up to float rounding)."""
    by_count: dict[int, list[int]] = {}
    for i, (_, _, opts) in enumerate(rows):
        by_count.setdefault(len(opts), []).append(i)
    out = []
    for n, members in by_count.items():
        real = [len(rows[i][1]) + sum(len(t) for t in rows[i][2]) for i in members]
        widths = [len(rows[i][1]) + n * max((len(t) for t in rows[i][2]), default=0) for i in members]
        out += [(n, [members[j] for j in group])
                for group in length_groups(real, widths, most=max(1, batch_size // max(n, 1)))]
    return out


CONTEXT_TOKENS = 32768
"""Most context positions held per forward (rows x context length) when a shared context is copied to
each row: SmolLM2-135M keeps 46 KB of keys and values per position, so about 1.5 GB at fp32."""


def option_loglik(model: nn.Module, params: Mapping[str, Tensor], examples: Sequence[Example], tokenizer,  # noqa: ANN001
                  config: CollateConfig, *, normalize: str = "mean",
                  batch_size: int = 32) -> list[tuple[list[int], Tensor]]:
    """Differentiable option scores: ``[(indices, scores [len(indices), n])]``, one entry per chunk of
    examples sharing a context and an option count ``n``; ``scores[r, j]`` is option ``j`` of
    example ``indices[r]`` (shared prompt encoding, as :func:`option_scores`).

    A shared context (the demonstrations of in-context rows) runs through the model once per call
    when no gradient is taken, its KV cache copied to each chunk's rows; with gradients, once per
    chunk. Chunks hold at most :data:`CONTEXT_TOKENS` copied context positions.
    """
    device = next(model.parameters()).device
    rows = token_rows(examples, tokenizer, config.max_length)
    swapped = {f"m.{k}": v for k, v in params.items()}
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _, _) in enumerate(rows):
        groups.setdefault(tuple(ctx), []).append(i)
    out = []
    for ctx, members in groups.items():
        c_ids = torch.tensor([ctx], dtype=torch.long, device=device) if ctx else None
        rows_cap = max(1, min(batch_size, CONTEXT_TOKENS // max(1, len(ctx))))
        chunks = chunks_by_option_count([rows[i] for i in members], rows_cap)
        c_cache = None
        if ctx and len(chunks) > 1 and not torch.is_grad_enabled():
            c_cache = functional_call(_Context(model), swapped, (c_ids,), strict=False)
        for n, chunk in chunks:
            idx = [members[j] for j in chunk]
            p_ids, p_mask, o_ids, o_mask = (t.to(device) for t in pad_rows([rows[i] for i in idx], _pad_id(tokenizer)))
            logits = functional_call(_PromptThenOptions(model), swapped,
                                     (p_ids, p_mask, o_ids, o_mask, n, c_ids, c_cache), strict=False)
            out.append((idx, option_logprobs(logits, o_ids, o_mask, normalize).view(len(idx), n)))
    return out


def rank_loss(model: nn.Module, params: Mapping[str, Tensor], examples: Sequence[Example], tokenizer,  # noqa: ANN001
              config: CollateConfig, *, normalize: str = "mean") -> Tensor:
    """The rank-classification cross-entropy: mean over ``examples`` of ``-log softmax(scores)[label]``
    over each example's options (the decision the evaluation scores, not the answer's tokens)."""
    if not examples or any(ex.label < 0 or not ex.options for ex in examples):
        raise BatchError("rank_loss needs examples with options and a label")
    total = 0.0
    for idx, scores in option_loglik(model, params, examples, tokenizer, config, normalize=normalize,
                                     batch_size=max(len(ex.options) for ex in examples) * len(examples)):
        labels = torch.tensor([examples[i].label for i in idx], device=scores.device)
        total = total + torch.nn.functional.cross_entropy(scores, labels, reduction="sum")
    return total / len(examples)  # type: ignore[return-value]


def _scores_shared(model: nn.Module, params: Mapping[str, Tensor], examples: Sequence[Example], tokenizer,  # noqa: ANN001
                   config: CollateConfig, normalize: str, batch_size: int) -> list[list[float]]:
    out: list[list[float]] = [[] for _ in examples]
    for idx, scores in option_loglik(model, params, examples, tokenizer, config, normalize=normalize,
                                     batch_size=batch_size):
        for i, row in zip(idx, scores.tolist(), strict=True):
            out[i] = row
    return out


@torch.no_grad()
def option_scores(model: nn.Module, params: Mapping[str, Tensor], examples: Sequence[Example], tokenizer,  # noqa: ANN001
                  config: CollateConfig, *, normalize: Literal["mean", "sum"] = "mean",
                  batch_size: int = 32, shared_prompt: bool = True) -> list[list[float]]:
    """Log-likelihood of every option of every example, ``scores[i][j]`` for option ``j`` of example ``i``.

    Args:
        shared_prompt: Encode each prompt once and score its options on the prompt's KV cache
            (default); ``False`` runs prompt + option as separate rows (the reference path).
    """
    if shared_prompt:
        return _scores_shared(model, params, examples, tokenizer, config, normalize, batch_size)
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    rows = [(i, ctx + prompt, option) for i, (ctx, prompt, opts) in
            enumerate(token_rows(examples, tokenizer, config.max_length)) for option in opts]
    flat: list[float] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ids, mask = pad_sequences([p + o for _, p, o in chunk], pad)
        labels, _ = pad_sequences([[IGNORE_INDEX] * len(p) + o for _, p, o in chunk], IGNORE_INDEX)
        batch = prepare_batch({"input_ids": ids.to(device), "attention_mask": mask.to(device),
                               "labels": labels.to(device)})
        logits = target_logits(model, params, batch)  # [B, M, V]
        targets = batch["target_ids"]
        flat += option_logprobs(logits, targets.clamp(min=0), (targets != IGNORE_INDEX).long(), normalize).tolist()
    out: list[list[float]] = [[] for _ in examples]
    for (i, _, _), score in zip(rows, flat, strict=True):
        out[i].append(score)
    return out


@torch.no_grad()
def greedy_generate(model: nn.Module, params: Mapping[str, Tensor], prompts: Sequence[str], tokenizer,  # noqa: ANN001
                    *, max_length: int = 256, max_new_tokens: int = 16, stop: str = "\n",
                    kv_cache: bool = True) -> list[str]:
    """Greedy continuations of ``prompts`` (cut at ``stop`` and EOS), decoded and stripped.

    Args:
        kv_cache: Run each new token on the KV cache of the tokens before it (default); ``False``
            runs the whole sequence again for every token (the reference path).
    """
    device = next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=True)["input_ids"][-(max_length - max_new_tokens):] for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = pad_sequences(encoded, pad, "left")  # every row ends at the last column
    ids, mask = ids.to(device), mask.to(device)
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    swapped = {f"m.{k}": v for k, v in params.items()}
    cache, fed = None, ids  # with the cache, only the tokens not yet seen are fed
    for _ in range(max_new_tokens):
        if kv_cache:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -fed.shape[1]:]
            logits, cache = functional_call(_NextToken(model), swapped, (fed, mask, positions, cache), strict=False)
        else:
            last = torch.full((len(prompts), 1), ids.shape[1] - 1, dtype=torch.long, device=device)
            batch = {"input_ids": ids, "attention_mask": mask, "target_positions": last, "target_ids": last}
            logits = target_logits(model, params, batch)[:, 0]
        token = logits.argmax(-1)
        for row, t in enumerate(token.tolist()):
            if not done[row]:
                new[row].append(t)
                text = tokenizer.decode(new[row], skip_special_tokens=True)
                done[row] = t == tokenizer.eos_token_id or bool(stop and stop in text.lstrip(stop))
        if all(done):
            break
        fed = token.unsqueeze(1)
        ids = torch.cat([ids, fed], 1)
        mask = torch.cat([mask, torch.ones_like(fed)], 1)
    outs = []
    for tokens in new:
        text = tokenizer.decode(tokens, skip_special_tokens=True).lstrip("\n")
        outs.append(text.split(stop)[0].strip() if stop else text.strip())
    return outs


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalized prediction equals a normalized reference."""
    return float(any(normalize_answer(prediction) == normalize_answer(r) for r in references))


def generation_score(metric: str, prediction: str, references: Sequence[str]) -> float:
    """A generated answer's score under a task's ``metric``: :func:`exact_match` or :func:`token_f1`.

    Raises:
        ConfigError: For another metric.
    """
    if metric not in GENERATION_METRICS:
        raise ConfigError("metric", f"{metric!r} does not score generated answers (use exact_match or token_f1)")
    return GENERATION_METRICS[metric](prediction, references)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """Best token-overlap F1 of the prediction against the references (SQuAD)."""
    best = 0.0
    pred = normalize_answer(prediction).split()
    for ref in references:
        gold = normalize_answer(ref).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if not pred or not gold:
            best = max(best, float(pred == gold))
        elif common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


GENERATION_METRICS = {"exact_match": exact_match, "token_f1": token_f1}
