"""iMAML (Rajeswaran et al. 2019, "Meta-Learning with Implicit Gradients", arXiv:1909.04630).

The inner loop solves the proximally regularized task problem::

    phi_i = argmin_phi  L_support_i(phi) + lam/2 ||phi - theta||^2

(``lam`` is ``inner.proximal``: the term is added by the inner loop itself, so evaluation adapts a
trained initialization with the same regularized problem; first-order: no graph is kept), and
the meta-gradient of the query loss is the implicit one::

    g_i = (I + H_i / lam)^-1  grad L_query_i(phi_i),      H_i = Hessian of L_support_i at phi_i

obtained by conjugate gradient (or a Neumann series) on Hessian-vector products, so memory does not
grow with the inner steps. The implicit gradient is exact at the inner problem's solution: give the
inner loop enough steps to approach it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..config import InnerConfig
from ..data.episode import Episode
from ..errors import ConfigError
from ..implicit import implicit_gradient
from ..inner import UpdateRule, adapt, double_backward_attention
from ..losses import Batch, lm_loss, lm_loss_and_accuracy
from ..params import ParameterSelection
from .base import MetaLearner, register_algorithm


@dataclasses.dataclass
class IMAMLConfig:
    """iMAML's outer step.

    Attributes:
        inner: The inner loop on the regularized support loss (always run first-order; no graph);
            ``inner.proximal`` is lambda (> 0): larger keeps the adapted weights nearer the
            initialization and makes the linear system better conditioned.
        solver: ``cg`` (conjugate gradient) or ``neumann`` (truncated Neumann series; needs the
            Hessian's eigenvalues below ``lam``).
        cg_steps: Iterations of the solver (Hessian-vector products per task).
    """

    inner: InnerConfig = dataclasses.field(
        default_factory=lambda: InnerConfig(first_order=True, steps=10, proximal=1.0))
    solver: Literal["cg", "neumann"] = "cg"
    cg_steps: int = 5

    def __post_init__(self) -> None:
        if not self.inner.proximal > 0:
            raise ConfigError("algorithm.inner.proximal", f"imaml needs lambda > 0, got {self.inner.proximal}")
        if not 1 <= self.cg_steps <= 1000:
            raise ConfigError("algorithm.cg_steps", f"must be in 1..1000, got {self.cg_steps}")


def implicit_task_gradient(model: nn.Module, start: Mapping[str, Tensor], support: Batch, query: Batch,
                           inner: InnerConfig, *, steps: int, solver: str = "cg",
                           ) -> tuple[list[Tensor], float, float]:
    """iMAML's meta-gradient of one task w.r.t. the initialization ``start`` (detached fast weights).

    Adapts with ``inner`` (first-order) on the support loss plus ``inner.proximal``'s term, then
    solves ``(I + H/lam) g = grad L_query(phi)``, ``lam = inner.proximal``, with ``steps``
    iterations of ``solver``, ``H`` the support
    loss's Hessian at ``phi`` (double-backward Hessian-vector products). Returns ``g`` (one tensor
    per fast weight, in ``start``'s order), the query loss and the query accuracy.
    """
    lam = inner.proximal
    if not lam > 0:
        raise ConfigError("inner.proximal", f"the implicit gradient needs lambda > 0, got {lam}")
    phi = adapt(model, dict(start), support, UpdateRule.of(inner, first_order=True), recompute=inner.recompute)
    phi = {n: v.detach().requires_grad_() for n, v in phi.items()}
    q_loss, q_acc = lm_loss_and_accuracy(model, phi, query)
    query_grad = list(torch.autograd.grad(q_loss, list(phi.values()), allow_unused=True, materialize_grads=True))
    with double_backward_attention(model):
        s_grads = torch.autograd.grad(lm_loss(model, phi, support), list(phi.values()), create_graph=True,
                                      allow_unused=True, materialize_grads=True)

        def hvp(v: list[Tensor]) -> list[Tensor]:
            return list(torch.autograd.grad(s_grads, list(phi.values()), v, retain_graph=True, allow_unused=True,
                                            materialize_grads=True))

        grad = implicit_gradient(hvp, query_grad, lam, steps, solver)
    return [g.detach() for g in grad], float(q_loss.detach()), float(q_acc)


@register_algorithm("imaml", IMAMLConfig)
class IMAML(MetaLearner):
    """Implicit MAML over the fast weights' initialization.

    Raises:
        ConfigError: If the selection has shared weights (their implicit gradient needs mixed second
            derivatives this implementation does not take; use fomaml or maml for them).
    """

    @classmethod
    def needs_double_backward(cls, config: Any) -> bool:
        """Always: Hessian-vector products are double backward."""
        return True

    def __init__(self, model: nn.Module, selection: ParameterSelection, config: IMAMLConfig) -> None:
        if selection.shared:
            raise ConfigError("meta.shared", "imaml meta-learns the fast weights' initialization only; set "
                                             "meta.shared: none (or use fomaml/maml for shared weights)")
        super().__init__(model, selection, config)

    def task_gradient(self, episode: Episode) -> tuple[list[Tensor], float, float]:
        """One task's implicit meta-gradient (one tensor per fast weight), query loss and accuracy."""
        cfg: IMAMLConfig = self.config
        start = {n: p.detach() for n, p in self.selection.fast_params(self.model).items()}
        return implicit_task_gradient(self.model, start, self.prefixed(episode.support),
                                      self.prefixed(episode.query, 1), self.inner, steps=cfg.cg_steps,
                                      solver=cfg.solver)

    def meta_gradients(self, episodes: Sequence[Episode]) -> dict[str, float]:
        fast = self.selection.fast_params(self.model)
        losses, accs = [], []
        for ep in episodes:
            grad, loss, acc = self.task_gradient(ep)
            for p, g in zip(fast.values(), grad, strict=True):
                p.grad = g / len(episodes) if p.grad is None else p.grad + g / len(episodes)
            losses.append(loss)
            accs.append(acc)
        return {"query_loss": sum(losses) / len(losses), "query_accuracy": sum(accs) / len(accs)}
