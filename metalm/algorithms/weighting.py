"""Task weighting for multi-task learning: loss weights, and gradient aggregation through torchjd.

Loss weightings combine the per-task losses ``L`` ``[T]`` of a batch into one objective; metalm
divides every objective by ``T`` so that ``equal`` is the plain mean (the scale meta-learning uses):

* ``equal``: ``sum_i L_i / T``.
* ``fixed``: ``sum_i w_i L_i / T`` with weights from the config.
* ``uncertainty`` (Kendall, Gal & Cipolla 2018, "Multi-Task Learning Using Uncertainty to Weigh
  Losses and Geometry and Semantics", eq. 10, the classification likelihood):
  ``sum_i (exp(-s_i) L_i + s_i / 2) / T`` with ``s_i = log sigma_i^2`` learned with the model.
* ``dwa`` (Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning with Attention", eq. 2):
  ``w_i = T softmax_i(r_i / temperature)``, ``r_i = L_i(t-1) / L_i(t-2)`` (1 until a task has two
  past losses).
* ``gradnorm`` (Chen et al. 2018, "GradNorm: Gradient Normalization for Adaptive Loss Balancing",
  eqs. 1-2): weights move to equalize ``G_i = ||grad_W w_i L_i||`` on the top adapted layer ``W``
  toward ``mean(G) * (Ltilde_i / mean(Ltilde)) ** alpha`` with ``Ltilde_i = L_i / L_i(0)``.

Gradient-conflict aggregation is not re-implemented here: any aggregator of ``torchjd`` (UPGrad,
PCGrad, CAGrad, MGDA, IMTL-G, Nash-MTL, Aligned-MTL, GradVac, ConFIG, DualProj, ...) is selected by
its lower-case class name and applied to the Jacobian of the per-task losses.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from functools import cache
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError

LOSS_WEIGHTINGS = ("equal", "fixed", "uncertainty", "dwa", "gradnorm")
_OPTIONS = {"equal": {}, "fixed": {}, "uncertainty": {}, "dwa": {"temperature": 2.0},
            "gradnorm": {"alpha": 1.5, "lr": 0.025}}


@cache
def aggregators() -> dict[str, type]:
    """torchjd's aggregators by lower-case class name (``upgrad``, ``pcgrad``, ``cagrad`` ...)."""
    from torchjd import aggregation

    base = aggregation.Aggregator
    out = {}
    for name in aggregation.__all__:
        obj = getattr(aggregation, name)
        if isinstance(obj, type) and issubclass(obj, base) and not inspect.isabstract(obj) and \
                name not in ("Aggregator", "WeightedAggregator", "GramianWeightedAggregator"):
            out[name.lower()] = obj
    return out


def weighting_names() -> list[str]:
    """Every name ``weighting`` accepts."""
    return [*LOSS_WEIGHTINGS, *sorted(aggregators())]


def weighting_options(name: str, options: Mapping[str, Any], field: str = "algorithm.options") -> dict[str, Any]:
    """The options of weighting ``name`` with defaults filled in.

    Raises:
        ConfigError: On an unknown weighting or an option it does not take.
    """
    if name in _OPTIONS:
        unknown = sorted(set(options) - set(_OPTIONS[name]))
        if unknown:
            known = ", ".join(_OPTIONS[name]) or "none"
            raise ConfigError(f"{field}.{unknown[0]}", f"{name} takes no option {unknown[0]!r} (options: {known})")
        out = {**_OPTIONS[name], **options}
        for key, value in out.items():
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{field}.{key}", f"must be a number > 0, got {value!r}")
        return out
    if name not in aggregators():
        raise ConfigError("algorithm.weighting", f"unknown weighting {name!r} (known: {', '.join(weighting_names())})")
    params = inspect.signature(aggregators()[name]).parameters
    unknown = sorted(k for k in options if k not in params)
    if unknown:
        raise ConfigError(f"{field}.{unknown[0]}", f"torchjd's {aggregators()[name].__name__} takes no argument "
                                                  f"{unknown[0]!r} (it takes: {', '.join(params) or 'none'})")
    return dict(options)


def build_aggregator(name: str, options: Mapping[str, Any], n_tasks: int):  # noqa: ANN201 - a torchjd Aggregator
    """A torchjd aggregator by lower-case name (``nashmtl`` gets ``n_tasks`` unless given).

    Raises:
        ConfigError: If torchjd cannot build it (a missing required option or optional dependency).
    """
    cls = aggregators()[name]
    kwargs = dict(options)
    if "n_tasks" in inspect.signature(cls).parameters:
        kwargs.setdefault("n_tasks", n_tasks)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, ImportError) as err:
        raise ConfigError("algorithm.options", f"torchjd's {cls.__name__}: {err}") from None


def dwa_weights(ratios: Tensor, temperature: float) -> Tensor:
    """Dynamic Weight Average: ``T * softmax(ratios / temperature)``, ``[T]`` from loss ratios ``[T]``."""
    return len(ratios) * torch.softmax(ratios / temperature, dim=0)


def uncertainty_objective(losses: Tensor, log_vars: Tensor) -> Tensor:
    """Kendall et al.'s objective ``sum_i exp(-s_i) L_i + s_i / 2`` for losses and ``s = log sigma^2`` ``[T]``."""
    return (torch.exp(-log_vars) * losses + 0.5 * log_vars).sum()


def gradnorm_update(weights: Tensor, grad_norms: Tensor, loss_ratios: Tensor, alpha: float, lr: float) -> Tensor:
    """One GradNorm step on the task weights, renormalized to keep their sum.

    Args:
        weights: Current task weights ``w`` ``[T]``.
        grad_norms: ``||grad_W L_i||`` ``[T]`` (unweighted), so ``G_i = w_i * grad_norms_i``.
        loss_ratios: ``L_i(t) / L_i(0)`` ``[T]``.
        alpha: The restoring-force exponent.
        lr: Step size of the weights.

    Returns:
        The new weights ``[T]``: a gradient step on ``sum_i |G_i - target_i|`` with the target held
        constant (as in the paper), clamped positive and rescaled to ``weights.sum()``.
    """
    g = weights * grad_norms
    relative = loss_ratios / loss_ratios.mean()
    target = g.mean() * relative ** alpha
    step = torch.sign(g - target) * grad_norms
    new = (weights - lr * step).clamp(min=1e-3)
    return new * (weights.sum() / new.sum())
