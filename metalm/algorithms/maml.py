"""MAML and FOMAML (Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", arXiv:1703.03400), with the options Meta-SGD, MAML++ and ANIL build on.

Outer objective for a meta-batch of tasks ``i``::

    L(θ, α) = 1/n Σ_i L_query_i(adapt(θ, support_i; α))

second-order by default, first-order (FOMAML) with ``inner.first_order``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ..config import InnerConfig
from ..data.episode import Episode
from ..errors import ConfigError
from ..inner import UpdateRule, adapt_trajectory
from ..losses import Batch, lm_loss_and_accuracy
from ..params import ParameterSelection
from .base import MetaLearner, register_algorithm


def multi_step_loss_weights(steps: int, outer_step: int, anneal_steps: int) -> list[float]:
    """MAML++'s per-step query-loss weights (Antoniou et al. 2019, arXiv:1810.09502, Sec. 4).

    Uniform ``1/steps`` at outer step 0; every non-final weight then decays linearly (floor
    ``0.03/steps``) while the final one grows (cap ``1 - (steps-1) * 0.03/steps``), reaching the
    floor/cap by ``anneal_steps`` outer steps. The paper anneals over epochs; metalm counts outer
    steps.
    """
    if steps == 1:
        return [1.0]
    floor = 0.03 / steps
    decay = 1.0 / steps / max(anneal_steps, 1)
    weights = [max(1.0 / steps - outer_step * decay, floor) for _ in range(steps - 1)]
    weights.append(min(1.0 / steps + outer_step * (steps - 1) * decay, 1.0 - (steps - 1) * floor))
    return weights


@dataclasses.dataclass
class MAMLConfig:
    """MAML's outer step.

    Attributes:
        inner: Inner-loop budget and update rule.
        learn_lr: Learn the inner rates: ``none``, ``per_tensor`` or ``per_element`` (Meta-SGD).
        lr_per_step: With learned rates, one rate per inner step (MAML++'s LSLR).
        multi_step_loss: Sum the query loss after every inner step with MAML++'s annealed weights.
        msl_anneal_steps: Outer steps over which the multi-step weights move to the final step.
        first_order_steps: Run the first this-many outer steps first-order, then second-order
            (MAML++'s derivative-order annealing); 0 = off.
        queries: Query rows as they are (``plain``), or after the support set as demonstrations
            (``direct``, or ``channel``: the input's loss given the answer): gradient + in-context
            adaptation, the inner loop adapting on the support set and the query loss (and
            evaluation's scoring) seeing the same support set in the prompt.
    """

    inner: InnerConfig = dataclasses.field(default_factory=InnerConfig)
    learn_lr: Literal["none", "per_tensor", "per_element"] = "none"
    lr_per_step: bool = False
    multi_step_loss: bool = False
    msl_anneal_steps: int = 100
    first_order_steps: int = 0
    queries: Literal["plain", "direct", "channel"] = "plain"

    def __post_init__(self) -> None:
        if self.lr_per_step and self.learn_lr == "none":
            raise ConfigError("algorithm.lr_per_step", "needs learn_lr to be per_tensor or per_element")
        if self.msl_anneal_steps < 1:
            raise ConfigError("algorithm.msl_anneal_steps", f"must be >= 1, got {self.msl_anneal_steps}")
        if self.first_order_steps < 0:
            raise ConfigError("algorithm.first_order_steps", f"must be >= 0, got {self.first_order_steps}")


@dataclasses.dataclass
class FOMAMLConfig(MAMLConfig):
    """First-order MAML: MAML's config with ``inner.first_order`` set."""

    inner: InnerConfig = dataclasses.field(default_factory=lambda: InnerConfig(first_order=True))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.inner.first_order:
            raise ConfigError("algorithm.inner.first_order", "fomaml is first-order; use maml for second order")


@register_algorithm("maml", MAMLConfig)
class MAML(MetaLearner):
    """Model-Agnostic Meta-Learning over the fast weights (and any shared weights).

    Second-order meta-gradients flow through the inner gradients (``create_graph=True``) into
    the initialization, the shared weights and any learned rates. FOMAML, ANIL, Meta-SGD and
    MAML++ are this class registered with their own configs.
    """

    vmaps_tasks = True  # run_tasks: the meta-batch's tasks together under torch.func.vmap with inner.vmap

    def __init__(self, model: nn.Module, selection: ParameterSelection, config: MAMLConfig) -> None:
        super().__init__(model, selection, config)
        if config.learn_lr != "none":
            self._init_learned_lrs(config.learn_lr, config.lr_per_step)

    def first_order_now(self) -> bool:
        """Whether this outer step is first-order (config, or MAML++ annealing still in force)."""
        return self.inner.first_order or self.outer_steps < self.config.first_order_steps

    def task_objective(self, support: Batch, query: Batch, *, first_order: bool,
                       weights: list[float] | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One task's outer objective, with its first support loss, query loss and query accuracy
        (the last three detached); runs alone or under ``vmap`` (:meth:`run_tasks`)."""
        fast = self.selection.fast_params(self.model)
        traj = adapt_trajectory(self.model, fast, self.prefixed(support),
                                UpdateRule.of(self.inner, lr=self.inner_lr(), first_order=first_order),
                                loss_fn=self.inner_loss(first_order), recompute=self.inner.recompute)
        query = self.prefixed(query, self.inner.steps if weights is not None else 1)
        q_loss, q_acc = lm_loss_and_accuracy(self.model, traj.params[-1], query)
        objective = q_loss
        if weights is not None:
            objective = weights[-1] * q_loss
            for w, params in zip(weights[:-1], traj.params[1:-1], strict=True):
                objective = objective + w * lm_loss_and_accuracy(self.model, params, query)[0]
        return objective, traj.losses[0].detach(), q_loss.detach(), q_acc.detach()

    def meta_gradients(self, episodes: Sequence[Episode]) -> dict[str, float]:
        cfg: MAMLConfig = self.config
        first_order = self.first_order_now()
        weights = (multi_step_loss_weights(self.inner.steps, self.outer_steps, cfg.msl_anneal_steps)
                   if cfg.multi_step_loss else None)
        task = functools.partial(self.task_objective, first_order=first_order, weights=weights)
        parts = []
        for objective, *metrics in self.run_tasks(task, episodes):
            (objective.sum() / len(episodes)).backward()
            parts.append(metrics)
        rows = [torch.cat(col) for col in zip(*parts, strict=True)]
        out = {k: float(v.mean()) for k, v in zip(("support_loss", "query_loss", "query_accuracy"), rows, strict=True)}
        out["first_order"] = float(first_order)
        return out


# First-order MAML: the meta-gradient is the query gradient at the adapted weights.
register_algorithm("fomaml", FOMAMLConfig)(MAML)


