"""Tokenization and collation: text examples -> batches ready for :func:`metalm.adapt`.

Prompt and answer are tokenized separately (the prompt with the tokenizer's special tokens, such
as a BOS, the answer without), so the answer's tokens are exactly the targets: ``labels`` is
``-100`` everywhere else. A row longer than ``max_length`` loses the start of its prompt (after
any BOS), never its answer; a language-modeling text that alone is too long is cut at the end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ..checks import check_number
from ..errors import AnswerTooLong, BatchError, ConfigError
from .episode import Episode, Example, TextEpisode


@dataclasses.dataclass
class CollateConfig:
    """How examples become tensors.

    Attributes:
        max_length: Most tokens per row.
        padding_side: ``right`` (training) or ``left`` (generation).
        add_eos: Append the EOS token to every answer (teaches generation to stop).
    """

    max_length: int = 256
    padding_side: Literal["right", "left"] = "right"
    add_eos: bool = False

    def __post_init__(self) -> None:
        check_number(self.max_length, "collate.max_length", low=2, integer=True)
        if self.padding_side not in ("right", "left"):
            raise ConfigError("collate.padding_side", f"{self.padding_side!r} is not one of right, left")
        if not isinstance(self.add_eos, bool):
            raise ConfigError("collate.add_eos", f"must be true or false, got {self.add_eos!r}")


def encode(example: Example, tokenizer, config: CollateConfig) -> tuple[list[int], int]:  # noqa: ANN001
    """Token ids of [context +] prompt + answer and how many of them (at the end) are the answer.

    A context (in-context demonstrations, :mod:`metalm.data.demos`) is tokenized as a segment of its
    own, with the special tokens, and the prompt then without; a row too long loses the context's
    oldest tokens first, then the prompt's.
    """
    prompt = tokenizer(example.prompt, add_special_tokens=not example.context)["input_ids"]
    if example.context:
        prompt = tokenizer(example.context, add_special_tokens=True)["input_ids"] + prompt
    if tokenizer.eos_token_id is not None and prompt and prompt[-1] == tokenizer.eos_token_id and example.prompt:
        prompt = prompt[:-1]  # tokenizers that append EOS to every text: the prompt is not finished
    answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    if config.add_eos and tokenizer.eos_token_id is not None:
        answer = answer + [tokenizer.eos_token_id]
    if not answer:
        raise BatchError(f"answer {example.answer!r} encodes to no tokens")
    bos = prompt[:1] if prompt and prompt[0] == tokenizer.bos_token_id else []
    room = config.max_length - len(answer)
    if room < len(bos):
        if example.prompt:
            raise AnswerTooLong(f"an answer of {len(answer)} tokens does not fit max_length={config.max_length}")
        answer = answer[: config.max_length - len(bos)]
        return bos + answer, len(answer)
    if len(prompt) > room:
        body = prompt[len(bos):]
        prompt = bos + (body[len(body) - (room - len(bos)):] if room > len(bos) else [])
    return prompt + answer, len(answer)


def pad_sequences(seqs: Sequence[Sequence[int]], pad: int,
                  side: Literal["right", "left"] = "right") -> tuple[Tensor, Tensor]:
    """Token lists as one ``[len(seqs), width]`` block: ``ids`` (``pad`` where there is no token) and
    ``mask`` (1 on tokens). ``left`` puts every row's last token in the last column."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, tokens in enumerate(seqs):
        start = 0 if side == "right" else width - len(tokens)
        ids[row, start:start + len(tokens)] = torch.tensor(list(tokens), dtype=torch.long)
        mask[row, start:start + len(tokens)] = 1
    return ids, mask


def collate(examples: Sequence[Example], tokenizer, config: CollateConfig | None = None) -> dict[str, Tensor]:  # noqa: ANN001
    """Tokenize and pad examples into ``input_ids``, ``attention_mask`` and ``labels`` (``[B, T]``)."""
    config = config or CollateConfig()
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence) or \
            not all(isinstance(ex, Example) for ex in examples):
        raise BatchError(f"examples must be a list of Example, got {type(examples).__name__}")
    if not examples:
        raise BatchError("cannot collate an empty list of examples")
    encoded = [encode(ex, tokenizer, config) for ex in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids, mask = pad_sequences([tokens for tokens, _ in encoded], pad, config.padding_side)
    # Targets: the answer's tokens, the last n_answer of each row's tokens.
    answers = [[-100] * (len(tokens) - n) + tokens[len(tokens) - n:] for tokens, n in encoded]
    labels, _ = pad_sequences(answers, -100, config.padding_side)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def tensorize(episode: TextEpisode, tokenizer, config: CollateConfig | None = None,  # noqa: ANN001
              queries: Literal["plain", "direct", "channel"] = "plain") -> Episode:
    """The tensor :class:`Episode` of a text episode (which it keeps as ``text``).

    Args:
        queries: ``plain`` query rows, or each query after the support set as demonstrations
            (:func:`metalm.data.demos.training_rows`): ``direct`` (loss on the answer) or ``channel``
            (loss on the input given the answer), as MetaICL trains (Min et al. 2022).
    """
    from .demos import training_rows

    if queries not in ("plain", "direct", "channel"):
        raise ConfigError("queries", f"{queries!r} is not one of plain, direct, channel")
    query = episode.query if queries == "plain" else training_rows(episode, channel=queries == "channel")
    return Episode(collate(episode.support, tokenizer, config), collate(query, tokenizer, config),
                   episode.task, episode)
