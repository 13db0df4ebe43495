"""A synthetic family of N-way classification tasks over token sequences.

Used by the examples and tests where real text is not needed: it runs on any vocabulary in
milliseconds and has the structure meta-learning exploits. Each task picks ``n_classes`` *key*
tokens and ``n_classes`` *label* tokens (its verbalizer). An example of class ``c`` is a row of
random filler tokens with the key of ``c`` at a random position, then a separator, then the label
token of ``c``; only that last token is a target. What transfers across tasks is the format (the
answer is one of the label-pool tokens, chosen by which key occurs); what must be learned from the
support set is the task's key-to-label pairing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from .episode import Episode


class SyntheticTasks:
    """Sample tasks and N-way K-shot episodes of the key -> label family.

    Token ids: ``0`` is the separator, keys come from ``[1, 1 + key_pool)``, labels from the next
    ``label_pool`` ids and filler from the rest of the vocabulary.

    Args:
        vocab_size: The model's vocabulary size.
        n_classes: Classes per task (N).
        seq_len: Tokens per row, separator and label included.
        key_pool: How many distinct key tokens tasks draw from.
        label_pool: How many distinct label tokens tasks draw from.
    """

    def __init__(self, vocab_size: int, n_classes: int = 4, seq_len: int = 12, key_pool: int = 16,
                 label_pool: int = 8) -> None:
        if n_classes < 2 or n_classes > min(key_pool, label_pool):
            raise ConfigError("n_classes", f"must be in 2..{min(key_pool, label_pool)}, got {n_classes}")
        if seq_len < 3:
            raise ConfigError("seq_len", f"must be >= 3, got {seq_len}")
        self.filler_start = 1 + key_pool + label_pool
        if vocab_size <= self.filler_start + 1:
            raise ConfigError("vocab_size", f"must exceed {self.filler_start + 1} for these pools, got {vocab_size}")
        self.vocab_size, self.n_classes, self.seq_len = vocab_size, n_classes, seq_len
        self.key_pool, self.label_pool = key_pool, label_pool

    def task(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw a task: its key tokens and label tokens, both ``[n_classes]``."""
        keys = 1 + torch.randperm(self.key_pool, generator=generator)[: self.n_classes]
        labels = 1 + self.key_pool + torch.randperm(self.label_pool, generator=generator)[: self.n_classes]
        return keys, labels

    def examples(self, task: tuple[Tensor, Tensor], per_class: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``per_class`` examples of each class of ``task`` as a batch ``[n_classes * per_class, seq_len]``."""
        keys, labels = task
        n = self.n_classes * per_class
        cls = torch.arange(self.n_classes).repeat_interleave(per_class)
        ids = torch.randint(self.filler_start, self.vocab_size, (n, self.seq_len), generator=generator)
        where = torch.randint(0, self.seq_len - 2, (n,), generator=generator)
        ids[torch.arange(n), where] = keys[cls]
        ids[:, -2] = 0
        ids[:, -1] = labels[cls]
        target = torch.full_like(ids, -100)
        target[:, -1] = ids[:, -1]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": target}

    def episode(self, shots: int, queries: int, generator: torch.Generator) -> Episode:
        """One N-way episode: ``shots`` support and ``queries`` query examples per class of a fresh task."""
        task = self.task(generator)
        return Episode(self.examples(task, shots, generator), self.examples(task, queries, generator), "synthetic")

    def in_context(self, episode: Episode, generator: torch.Generator) -> Episode:
        """``episode`` with each query row written after the support rows as demonstrations (in a random
        order, shared by the queries), the loss on the query's label token only: in-context rows as
        MetaICL trains on them (:func:`metalm.data.demos.training_rows` for text tasks).

        The support set is unchanged; the query batch becomes ``[Q, S * seq_len + seq_len]`` for
        ``S`` support and ``Q`` query rows. A task's key-to-label pairing is readable only from the
        demonstrations, so a model scores above chance on these rows only by learning in context.
        """
        support, query = episode.support["input_ids"], episode.query["input_ids"]
        order = torch.randperm(support.shape[0], generator=generator)
        demos = support[order].reshape(1, -1).expand(query.shape[0], -1)
        ids = torch.cat([demos, query], dim=1)
        labels = torch.full_like(ids, -100)
        labels[:, -1] = ids[:, -1]
        rows = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        return Episode(episode.support, rows, episode.task)

    def episodes(self, n: int, shots: int, queries: int, generator: torch.Generator) -> list[Episode]:
        """``n`` episodes, each from a fresh task."""
        return [self.episode(shots, queries, generator) for _ in range(n)]
