"""The unit of meta-learning: one task's support set and query set, as text and as tensors."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..errors import BatchError


@dataclasses.dataclass
class Example:
    """One rendered example.

    Attributes:
        prompt: The prompt text (empty for language modeling).
        answer: The answer text appended to the prompt, its tokens are the targets.
        options: Candidate answers for rank classification (classification and multiple choice),
            each with the task's target prefix; empty for generation and language modeling.
        label: Index of ``answer`` in ``options`` (``-1`` without options).
        references: Acceptable answers for generation metrics.
        content_free: The prompt rendered with the example's input fields replaced by each of the
            sampler's ``content_free`` strings (contextual calibration, Zhao et al. 2021); empty
            unless asked for.
        context: Text before the prompt shared by other examples (in-context demonstrations);
            scoring encodes it once for all the examples that share it, and truncates it (oldest
            tokens first) before the prompt.
    """

    prompt: str
    answer: str
    options: list[str] = dataclasses.field(default_factory=list)
    label: int = -1
    references: list[str] = dataclasses.field(default_factory=list)
    content_free: tuple[str, ...] = ()
    context: str = ""

    def __post_init__(self) -> None:
        for key in ("prompt", "answer", "context"):
            if not isinstance(getattr(self, key), str):
                raise BatchError(f"Example.{key} must be a str, got {type(getattr(self, key)).__name__}")
        for key in ("options", "references", "content_free"):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise BatchError(f"Example.{key} must be a list of str, got {value!r:.60}")
        if isinstance(self.label, bool) or not isinstance(self.label, int) or not -1 <= self.label < max(
                len(self.options), 1 if self.label == -1 else 0):
            raise BatchError(f"Example.label must be -1 or an index into its {len(self.options)} options, "
                             f"got {self.label!r}")


@dataclasses.dataclass
class TextEpisode:
    """An episode before tokenization.

    Attributes:
        task: Task name.
        type: Task type (``classification``, ``multiple_choice``, ``generation``, ``language_modeling``).
        support: Examples to adapt on.
        query: Examples to score.
        classes: For classification, the episode's classes (original label names); position ``i``
            is episode label ``i``.
        metric: The task's metric (its YAML ``metric``): how a generation episode's queries are
            scored (``exact_match`` or ``token_f1``); ``accuracy`` for option-scored tasks.
    """

    task: str
    type: str
    support: list[Example]
    query: list[Example]
    classes: list[str] = dataclasses.field(default_factory=list)
    metric: str = "accuracy"


@dataclasses.dataclass
class Episode:
    """A support batch to adapt on and a query batch to evaluate the adapted weights on.

    Both batches are dicts with ``input_ids``, ``attention_mask`` and ``labels`` (``[B, T]``,
    ``-100`` in ``labels`` where there is no loss), as :func:`metalm.adapt` takes them.

    Attributes:
        support: The batch the inner loop adapts on.
        query: The batch the adapted weights are scored on (outer loss or evaluation).
        task: Name of the task the episode was drawn from.
        text: The text episode it was tokenized from, when there is one (for scoring).
    """

    support: dict[str, Tensor]
    query: dict[str, Tensor]
    task: str = ""
    text: TextEpisode | None = None

    def to(self, device: torch.device | str) -> Episode:
        """A copy of the episode with every tensor on ``device``."""
        return Episode({k: v.to(device) for k, v in self.support.items()},
                       {k: v.to(device) for k, v in self.query.items()}, self.task, self.text)
