"""The one inner loop: pure, functional adaptation of fast weights on a support batch.

Training (every algorithm), evaluation and baselines all call :func:`adapt` (or
:func:`adapt_trajectory`, the same loop returning every step, with the same arguments). The model is
never modified: fast weights live in a dict and are swapped in with ``torch.func.functional_call``.
What the loop computes is an :class:`UpdateRule` (steps, rate, order, optimizer, clipping, proximal
term); how it runs (the loss, frozen tensors, recomputation, a finiteness check) are the other
keywords, and nothing of them changes the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .checks import check_number, check_weights, vocabulary_size
from .errors import ConfigError, MetalmError, NonFiniteError
from .losses import Batch, lm_loss, prepare_batch, proximal_loss
from .models import DOUBLE_BACKWARD_ATTENTION, attention_implementation
from .recompute import recomputed

LossFn = Callable[[nn.Module, Mapping[str, Tensor], Batch], Tensor]
LearningRate = float | Mapping[str, Tensor]


@dataclasses.dataclass(frozen=True)
class UpdateRule:
    """How the inner loop updates fast weights (MAML: Finn et al. 2017; learned rates: Meta-SGD, Li et
    al. 2017 and MAML++, Antoniou et al. 2019; the proximal term: iMAML, Rajeswaran et al. 2019).

    Attributes:
        steps: Number of inner steps (0 returns the weights unchanged).
        lr: A float, or a dict name -> tensor of learned rates. A tensor with as many dims as its
            parameter (or fewer) broadcasts to it; one with an extra leading dim is per step
            (``[steps, ...]``, row ``t`` used at step ``t``), e.g. ``[steps, 1, 1]`` for a per-step
            per-tensor rate.
        first_order: If False, the inner gradients are part of the graph (``create_graph=True``)
            and the result is differentiable w.r.t. the weights and ``lr`` to second order (MAML).
            If True, each step is ``p - lr * g.detach()``: the result stays connected to the
            starting weights through the identity, so backpropagating a query loss gives exactly the
            first-order (FOMAML) meta-gradient, the query gradient at the adapted weights.
        optimizer: ``sgd`` or ``adam`` (a differentiable Adam with bias correction, its state
            starting at zero for every call).
        clip_grad_norm: If set, each step's gradients are scaled so their global norm is at most this.
        betas: Adam's ``(beta1, beta2)``.
        eps: Adam's epsilon.
        proximal: Add ``proximal/2 ||phi - phi_0||^2`` to the support loss, anchored at the starting
            values as constants (iMAML's regularized inner problem); 0 = off.
    """

    steps: int
    lr: LearningRate
    first_order: bool = False
    optimizer: Literal["sgd", "adam"] = "sgd"
    clip_grad_norm: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    proximal: float = 0.0

    @classmethod
    def of(cls, inner: Any, **overrides: Any) -> UpdateRule:
        """The rule of an :class:`~metalm.config.InnerConfig` (its update fields; its execution fields,
        ``vmap``, ``vmap_chunk``, ``compile``, ``cache_prefix``, ``recompute``, are not part of it), with
        ``overrides`` (e.g. learned rates as ``lr``, ``first_order=True`` at evaluation)."""
        fields = {f.name: getattr(inner, f.name) for f in dataclasses.fields(cls)}
        return cls(**{**fields, **overrides})


def _rule(rule: UpdateRule | None, update: Mapping[str, Any]) -> UpdateRule:
    """``rule``, or the rule of the keyword form ``adapt(..., steps=5, lr=0.1)``."""
    if rule is not None:
        if update:
            raise ConfigError(next(iter(update)), "give an UpdateRule or its fields as keywords, not both")
        if not isinstance(rule, UpdateRule):
            raise ConfigError("rule", f"must be a metalm.UpdateRule, got {type(rule).__name__}")
        return rule
    known = {f.name for f in dataclasses.fields(UpdateRule)}
    unknown = sorted(set(update) - known)
    if unknown:
        raise ConfigError(unknown[0], f"is not an argument of the inner loop (update rule: {', '.join(sorted(known))}; "
                                      "also loss_fn, frozen, recompute, check_finite)")
    for key in ("steps", "lr"):
        if key not in update:
            raise ConfigError(key, "is required (or pass rule=UpdateRule(...))")
    return UpdateRule(**update)


class Trajectory(NamedTuple):
    """What :func:`adapt_trajectory` returns.

    Attributes:
        params: ``steps + 1`` dicts of fast weights: the initial ones, then after each step.
        losses: The support loss before each step (``steps`` scalars, attached to the graph; detached
            in a first-order loop under ``vmap``).
    """

    params: list[dict[str, Tensor]]
    losses: list[Tensor]


def _check_lr(lr: LearningRate, params: Mapping[str, Tensor], steps: int) -> None:
    if not isinstance(lr, Mapping):
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr):
            raise ConfigError("lr", f"must be a finite number or a dict of tensors, got {lr!r}")
        if lr < 0:
            raise ConfigError("lr", f"must be >= 0 (a negative rate ascends the support loss), got {lr!r}")
        dtype = next(iter(params.values())).dtype
        if lr > torch.finfo(dtype).max:
            raise ConfigError("lr", f"{lr!r} overflows the weights' {dtype}")
        return
    missing = [n for n in params if n not in lr]
    if missing:
        raise ConfigError("lr", f"no learning rate for fast weight {missing[0]!r} ({len(missing)} missing)")
    for name, p in params.items():
        v = lr[name]
        if not isinstance(v, Tensor) or not v.is_floating_point():
            raise ConfigError(f"lr[{name}]", f"must be a floating tensor, got {getattr(v, 'dtype', type(v).__name__)}")
        if v.dim() == p.dim() + 1:
            if v.shape[0] < steps:
                raise ConfigError(f"lr[{name}]", f"per-step rates for {v.shape[0]} steps, but steps={steps}")
            v = v[0]
        try:
            torch.broadcast_shapes(v.shape, p.shape)
        except RuntimeError:
            raise ConfigError(f"lr[{name}]", f"shape {tuple(v.shape)} does not broadcast to {tuple(p.shape)}") from None


def _check_arguments(model: nn.Module, params: Any, rule: UpdateRule, frozen: Any) -> None:
    """One :class:`ConfigError` naming the argument for a bad call of :func:`adapt` (no tensor values read)."""
    steps, lr, optimizer, clip_grad_norm = rule.steps, rule.lr, rule.optimizer, rule.clip_grad_norm
    betas, eps, proximal = rule.betas, rule.eps, rule.proximal
    check_number(steps, "steps", integer=True)
    if optimizer not in ("sgd", "adam"):
        raise ConfigError("optimizer", f"{optimizer!r} is not one of sgd, adam")
    if clip_grad_norm is not None:
        check_number(clip_grad_norm, "clip_grad_norm", strict=True)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ConfigError("betas", f"must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        check_number(beta, f"betas[{i}]", high=1.0)
    check_number(eps, "eps", strict=True)
    check_number(proximal, "proximal")
    if not params:
        raise ConfigError("params", "no fast weights to adapt")
    check_weights(model, params, "params")
    if frozen is not None:
        check_weights(model, frozen, "frozen")
        overlap = sorted(set(frozen) & set(params))
        if overlap:
            raise ConfigError("frozen", f"{overlap[0]!r} is a fast weight; frozen tensors are the ones not adapted")
    _check_lr(lr, params, steps)


def _lr_at(lr: LearningRate, name: str, p: Tensor, step: int) -> Tensor | float:
    if not isinstance(lr, Mapping):
        return lr
    v = lr[name]
    return v[step] if v.dim() == p.dim() + 1 else v


def _safe_sqrt(x: Tensor) -> Tensor:
    # sqrt'(0) is infinite: a zero gradient entry (LoRA's A at B=0) would make second-order terms NaN.
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def under_vmap() -> bool:
    """Whether the caller runs inside a ``torch.func`` transform (e.g. :func:`metalm.batching.vmap_tasks`)."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def _loss_and_grads(loss_fn: LossFn, model: nn.Module, current: Mapping[str, Tensor], batch: Batch,
                    names: list[str], create_graph: bool,
                    frozen: Mapping[str, Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The support loss and its gradient w.r.t. each fast weight (zeros where unused).

    ``torch.autograd.grad`` (less overhead) unless inside ``vmap``, where batched tensors need
    ``torch.func.grad``; both keep the outer graph when ``create_graph`` (second order) and both
    compose with the outer ``backward``.
    """
    if not under_vmap():
        loss = loss_fn(model, {**frozen, **current} if frozen else current, batch)
        grads = torch.autograd.grad(loss, [current[n] for n in names], create_graph=create_graph,
                                    allow_unused=True, materialize_grads=True)
        return loss, grads

    def f(ps: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        value = loss_fn(model, {**frozen, **ps} if frozen else ps, batch)
        return value, value

    # First order: the outer level records nothing (torch.func.grad still differentiates inside).
    with contextlib.nullcontext() if create_graph else torch.no_grad():
        grads, loss = torch.func.grad(f, has_aux=True)(dict(current))
    return loss, tuple(grads[n] for n in names)


def _attention_context(model: nn.Module, second_order: bool) -> contextlib.AbstractContextManager[None]:
    if not second_order:
        return contextlib.nullcontext()
    impl = attention_implementation(model)
    if impl not in DOUBLE_BACKWARD_ATTENTION:
        raise MetalmError(f"attention implementation {impl!r} has no double backward; load the model with "
                          f"attn_implementation='sdpa' or 'eager' for second-order meta-learning")
    # SDPA's fused CPU/CUDA kernels have no double backward; its math kernel does.
    return sdpa_kernel(SDPBackend.MATH)


def double_backward_attention(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """The attention kernel for differentiating a gradient (Hessian-vector products, second order).

    Raises:
        MetalmError: If the model's attention implementation has no double backward.
    """
    return _attention_context(model, True)


def _inner_loop(model: nn.Module, params: Mapping[str, Tensor], batch: Batch, rule: UpdateRule, loss_fn: LossFn,
                frozen: Mapping[str, Tensor] | None, *, keep_history: bool, recompute: bool = False) -> Trajectory:
    # Without keep_history only the newest fast weights are held: a first-order loop over many
    # weights (Reptile, evaluation) then keeps one copy of them, not one per step.
    _check_arguments(model, params, rule, frozen)
    steps, lr, first_order, optimizer, proximal = rule.steps, rule.lr, rule.first_order, rule.optimizer, rule.proximal
    if loss_fn is lm_loss:
        batch = prepare_batch(batch, "support batch", vocabulary_size(model))
    if proximal:  # anchored at the starting values, as constants (iMAML's inner problem)
        loss_fn = proximal_loss({n: p.detach() for n, p in params.items()}, proximal, loss_fn)
    names = list(params)
    # torch.func.grad (under vmap) differentiates any input; torch.autograd.grad needs graph leaves.
    leaves_needed = not under_vmap()
    current = {n: (p.detach().requires_grad_() if leaves_needed and not p.requires_grad else p)
               for n, p in params.items()}
    history, losses = [current], []
    m1 = {n: torch.zeros_like(p) for n, p in current.items()} if optimizer == "adam" else {}
    m2 = {n: torch.zeros_like(p) for n, p in current.items()} if optimizer == "adam" else {}
    step = functools.partial(_step, model=model, batch=batch, names=names, rule=rule, loss_fn=loss_fn)
    if recompute and not first_order and steps > 0:
        if under_vmap():
            raise ConfigError("recompute", "cannot run under vmap (inner.vmap); choose one")
        closed = {n: p for n, p in model.named_parameters()
                  if p.requires_grad and n not in current and n not in (frozen or {})}
        run = functools.partial(_recomputed_step, step, model, names, sorted(m1), lr, closed, frozen or {})
    else:
        run = functools.partial(step, lr=lr, frozen=frozen or {})
    with torch.enable_grad(), _attention_context(model, not first_order and steps > 0):
        for t in range(steps):
            current, m1, m2, loss = run(t, current, m1, m2)
            if keep_history:
                history.append(current)
            else:
                history[0] = current
            losses.append(loss)
    return Trajectory(history, losses)


def _step(t: int, current: dict[str, Tensor], m1: dict[str, Tensor], m2: dict[str, Tensor], lr: LearningRate,
          frozen: Mapping[str, Tensor], *, model: nn.Module, batch: Batch, names: list[str], rule: UpdateRule,
          loss_fn: LossFn, create_graph: bool = True,
          ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], Tensor]:
    """Inner step ``t``: the support loss at ``current`` and the updated weights and Adam moments
    (``lr``: the rule's rate, passed apart so recomputation can differentiate learned rates)."""
    first_order, optimizer, clip_grad_norm, eps = rule.first_order, rule.optimizer, rule.clip_grad_norm, rule.eps
    loss, grads = _loss_and_grads(loss_fn, model, current, batch, names, create_graph and not first_order, frozen)
    if first_order:
        grads = tuple(g.detach() for g in grads)
    if clip_grad_norm is not None:
        total = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        coef = torch.clamp(clip_grad_norm / (total + 1e-6), max=1.0)
        grads = tuple(g * coef for g in grads)
    b1, b2 = rule.betas
    new, m1, m2 = {}, dict(m1), dict(m2)
    for n, g in zip(names, grads, strict=True):
        step_lr = _lr_at(lr, n, current[n], t)
        if optimizer == "adam":
            m1[n] = b1 * m1[n] + (1 - b1) * g
            m2[n] = b2 * m2[n] + (1 - b2) * g * g
            m_hat = m1[n] / (1 - b1 ** (t + 1))
            v_hat = m2[n] / (1 - b2 ** (t + 1))
            g = m_hat / (_safe_sqrt(v_hat) + eps)
        # One fused op (and one allocation) for a plain rate: every step copies each fast weight.
        plain = isinstance(step_lr, (int, float))
        new[n] = torch.add(current[n], g, alpha=-step_lr) if plain else current[n] - step_lr * g
    return new, m1, m2, loss


def _recomputed_step(step: Callable[..., Any], model: nn.Module, names: list[str], moments: list[str],
                     lr: LearningRate, closed: Mapping[str, Tensor], frozen: Mapping[str, Tensor], t: int,
                     current: dict[str, Tensor], m1: dict[str, Tensor], m2: dict[str, Tensor],
                     ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], Tensor]:
    """``step`` as a :func:`metalm.recompute.recomputed` function of every tensor it differentiates: the
    fast weights, Adam's moments, learned rates and the model's other trainable tensors (passed
    explicitly, so their gradients reach the model's own ``.grad`` through the recomputation)."""
    rates = dict(lr) if isinstance(lr, Mapping) else {}
    groups = [names, moments, moments, sorted(rates), sorted(closed)]

    def fn(*xs: Tensor, create_graph: bool) -> list[Tensor]:
        parts, start = [], 0
        for keys in groups:
            parts.append(dict(zip(keys, xs[start:start + len(keys)], strict=True)))
            start += len(keys)
        cur, a, b, r, c = parts
        with _attention_context(model, create_graph):
            new, a, b, loss = step(t, cur, a, b, r if rates else lr, {**frozen, **c}, create_graph=create_graph)
        return [*(new[n] for n in names), *(a[n] for n in moments), *(b[n] for n in moments), loss]

    xs = [*(current[n] for n in names), *(m1[n] for n in moments), *(m2[n] for n in moments),
          *(rates[n] for n in sorted(rates)), *(closed[n] for n in sorted(closed))]
    out = recomputed(fn, xs)
    k, m = len(names), len(moments)
    return (dict(zip(names, out[:k], strict=True)), dict(zip(moments, out[k:k + m], strict=True)),
            dict(zip(moments, out[k + m:k + 2 * m], strict=True)), out[-1])


def adapt(model: nn.Module, params: Mapping[str, Tensor], batch: Batch, rule: UpdateRule | None = None, *,
          loss_fn: LossFn = lm_loss, frozen: Mapping[str, Tensor] | None = None, recompute: bool = False,
          check_finite: bool = False, **update: Any) -> dict[str, Tensor]:
    """Adapt fast weights to a support batch by an :class:`UpdateRule`; a pure function.

    The model and its parameters are never modified: each step evaluates the loss with
    ``torch.func.functional_call(model, params)`` and takes ``torch.autograd.grad`` of it.

    Args:
        model: The (PEFT-wrapped) causal LM. Keep dropout off (models from
            :func:`metalm.load_model` are in eval mode).
        params: Fast weights by name, as in ``model.named_parameters()``; usually the model's own
            tensors (the meta-learned initialization), so the result is differentiable w.r.t. them.
        batch: ``input_ids`` ``[B, T]``, ``attention_mask`` ``[B, T]``, ``labels`` ``[B, T]`` with
            ``-100`` where there is no loss. The loss is the mean cross-entropy over target tokens,
            with logits computed at target positions only.
        rule: What each step computes. Or its fields as keywords (``update``): ``steps=5, lr=0.1``.
        loss_fn: ``loss_fn(model, params, batch) -> scalar``; default :func:`metalm.losses.lm_loss`.
        frozen: Tensors by name used in place of the model's own but never adapted nor
            differentiated by the inner loop (e.g. a trained run's shared weights), passed as
            values instead of being written into the model. The result holds the fast weights
            only: pass ``{**frozen, **adapted}`` to score with both.
        recompute: Second order only: keep no inner step's graph, and recompute each step while the
            meta-backward passes through it (:mod:`metalm.recompute`): memory of one step's graph
            instead of ``steps``, about one more forward and backward per step; the same
            meta-gradient. Not under ``vmap``.
        check_finite: Raise :class:`metalm.NonFiniteError` if an adapted weight holds NaN or inf.
            Off by default: it costs a device sync and cannot run under ``vmap`` (the trainer checks
            the meta-gradient before each outer update instead).

    Returns:
        The adapted fast weights, a new dict with the same names.

    Raises:
        NonFiniteError: With ``check_finite``, naming the first non-finite tensor.
        ConfigError: Naming the argument, for a bad rule or keyword.
        BatchError: On a malformed batch.
        MetalmError: For second-order adaptation with an attention kernel lacking double backward.

    Example:
        >>> adapted = metalm.adapt(model, selection.fast_params(model), support, steps=5, lr=0.1)
        >>> metalm.lm_loss(model, adapted, query).backward()  # MAML meta-gradient on the init
    """
    rule = _rule(rule, update)
    adapted = _inner_loop(model, params, batch, rule, loss_fn, frozen, keep_history=False,
                          recompute=recompute).params[-1]
    _check_finite(adapted, rule, check_finite)
    return adapted


def adapt_trajectory(model: nn.Module, params: Mapping[str, Tensor], batch: Batch, rule: UpdateRule | None = None,
                     *, loss_fn: LossFn = lm_loss, frozen: Mapping[str, Tensor] | None = None,
                     recompute: bool = False, check_finite: bool = False, **update: Any) -> Trajectory:
    """:func:`adapt` (the same arguments), returning every intermediate set of fast weights and the
    support loss before each step; MAML++'s multi-step loss reads the query loss at each of them."""
    rule = _rule(rule, update)
    trajectory = _inner_loop(model, params, batch, rule, loss_fn, frozen, keep_history=True, recompute=recompute)
    _check_finite(trajectory.params[-1], rule, check_finite)
    return trajectory


def _check_finite(adapted: Mapping[str, Tensor], rule: UpdateRule, check: bool) -> None:
    if not check:
        return
    bad = next((k for k, v in adapted.items() if not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise NonFiniteError(f"adapt: {bad!r} is NaN or infinite after {rule.steps} step(s) at lr "
                             f"{_lr_text(rule.lr)}; lower the learning rate or check the model's weights")


def _lr_text(lr: LearningRate) -> str:
    return f"{lr:g}" if isinstance(lr, (int, float)) else "(learned rates)"
