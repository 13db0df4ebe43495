"""The unit of meta-learning: one task's support batch and query batch."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor


@dataclasses.dataclass
class Episode:
    """A support batch to adapt on and a query batch to evaluate the adapted weights on.

    Both batches are dicts with ``input_ids``, ``attention_mask`` and ``labels`` (``[B, T]``,
    ``-100`` in ``labels`` where there is no loss), as :func:`metalm.adapt` takes them.

    Attributes:
        support: The batch the inner loop adapts on.
        query: The batch the adapted weights are scored on (outer loss or evaluation).
        task: Name of the task the episode was drawn from.
    """

    support: dict[str, Tensor]
    query: dict[str, Tensor]
    task: str = ""

    def to(self, device: torch.device | str) -> Episode:
        """A copy of the episode with every tensor on ``device``."""
        return Episode({k: v.to(device) for k, v in self.support.items()},
                       {k: v.to(device) for k, v in self.query.items()}, self.task)
