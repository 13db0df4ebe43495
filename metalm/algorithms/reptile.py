"""Reptile (Nichol et al. 2018, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999).

Adapt each task's fast weights with the inner loop, then move the initialization toward the
adapted weights. metalm writes ``(θ - φ_i)`` averaged over the meta-batch into ``θ.grad`` so any
outer optimizer applies it; ``SGD(lr=ε)`` gives the paper's update ``θ ← θ + ε·mean_i(φ_i - θ)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..config import InnerConfig
from ..data.episode import Episode
from ..errors import ConfigError
from ..inner import UpdateRule, adapt
from ..losses import Batch, lm_loss_and_accuracy
from ..params import ParameterSelection
from .base import MetaLearner, register_algorithm


@dataclasses.dataclass
class ReptileConfig:
    """Reptile's outer step.

    Attributes:
        inner: Inner-loop budget and update rule (always run first-order; no meta-graph is kept).
    """

    inner: InnerConfig = dataclasses.field(default_factory=lambda: InnerConfig(first_order=True))


@register_algorithm("reptile", ReptileConfig)
class Reptile(MetaLearner):
    """Reptile over the fast weights.

    Raises:
        ConfigError: If the selection has shared weights: Reptile updates only what the inner loop
            adapts, so shared weights would never move (adapt them with ``bitfit``/``full`` instead).
    """

    vmaps_tasks = True  # run_tasks, as MAML

    @classmethod
    def needs_double_backward(cls, config: Any) -> bool:
        """Never: no gradient of a gradient (its inner config only serves evaluation or is first-order)."""
        return False

    def __init__(self, model: nn.Module, selection: ParameterSelection, config: ReptileConfig) -> None:
        if selection.shared:
            raise ConfigError("meta.shared", "reptile moves only the weights the inner loop adapts; set it to "
                                             "none and choose an adapter (bitfit, full) that covers those weights")
        super().__init__(model, selection, config)

    def task_update(self, support: Batch, query: Batch) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """One task's adapted fast weights (detached), query loss and accuracy; runs alone or under
        ``vmap`` (:meth:`run_tasks`)."""
        start = {n: p.detach() for n, p in self.selection.fast_params(self.model).items()}
        adapted = adapt(self.model, start, self.prefixed(support), UpdateRule.of(self.inner, first_order=True),
                        loss_fn=self.inner_loss(True), recompute=self.inner.recompute)
        adapted = {n: v.detach() for n, v in adapted.items()}
        with torch.no_grad():
            q_loss, q_acc = lm_loss_and_accuracy(self.model, adapted, query)
        return adapted, q_loss, q_acc

    def meta_gradients(self, episodes: Sequence[Episode]) -> dict[str, float]:
        fast = self.selection.fast_params(self.model)
        losses, accuracies = [], []
        for adapted, q_loss, q_acc in self.run_tasks(self.task_update, episodes):
            with torch.no_grad():
                for n, p in fast.items():
                    delta = (p - adapted[n]).sum(0) / len(episodes)
                    p.grad = delta if p.grad is None else p.grad + delta
            losses.append(q_loss)
            accuracies.append(q_acc)
        return {"query_loss": float(torch.cat(losses).mean()), "query_accuracy": float(torch.cat(accuracies).mean())}
