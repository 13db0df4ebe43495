"""The one inner loop: pure, functional adaptation of fast weights on a support batch.

Training (every algorithm), evaluation and baselines all call :func:`adapt` (or
:func:`adapt_trajectory`, the same loop returning every step). The model is never modified:
fast weights live in a dict and are swapped in with ``torch.func.functional_call``.
"""

from __future__ import annotations

import contextlib
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


def _check_arguments(model: nn.Module, params: Any, steps: Any, lr: Any, optimizer: Any, clip_grad_norm: Any,
                     betas: Any, eps: Any, frozen: Any, proximal: Any) -> None:
    """One :class:`ConfigError` naming the argument for a bad call of :func:`adapt` (no tensor values read)."""
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


def adapt_trajectory(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batch: Batch,
    *,
    steps: int,
    lr: LearningRate,
    first_order: bool = False,
    optimizer: Literal["sgd", "adam"] = "sgd",
    clip_grad_norm: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    loss_fn: LossFn = lm_loss,
    frozen: Mapping[str, Tensor] | None = None,
    recompute: bool = False,
    proximal: float = 0.0,
) -> Trajectory:
    """Run the inner loop and return every intermediate set of fast weights.

    Same contract as :func:`adapt`, which returns the last entry of ``params`` (without keeping the
    others alive). MAML++'s multi-step loss reads the query loss at each entry of ``params``.
    """
    return _inner_loop(model, params, batch, steps, lr, first_order, optimizer, clip_grad_norm, betas, eps,
                       loss_fn, frozen, keep_history=True, recompute=recompute, proximal=proximal)


def _inner_loop(model: nn.Module, params: Mapping[str, Tensor], batch: Batch, steps: int, lr: LearningRate,
                first_order: bool, optimizer: str, clip_grad_norm: float | None, betas: tuple[float, float],
                eps: float, loss_fn: LossFn, frozen: Mapping[str, Tensor] | None, *,
                keep_history: bool, recompute: bool = False, proximal: float = 0.0) -> Trajectory:
    # Without keep_history only the newest fast weights are held: a first-order loop over many
    # weights (Reptile, evaluation) then keeps one copy of them, not one per step.
    _check_arguments(model, params, steps, lr, optimizer, clip_grad_norm, betas, eps, frozen, proximal)
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
    step = functools.partial(_step, model=model, batch=batch, names=names, first_order=first_order,
                             optimizer=optimizer, clip_grad_norm=clip_grad_norm, betas=betas, eps=eps,
                             loss_fn=loss_fn)
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
          frozen: Mapping[str, Tensor], *, model: nn.Module, batch: Batch, names: list[str], first_order: bool,
          optimizer: str, clip_grad_norm: float | None, betas: tuple[float, float], eps: float, loss_fn: LossFn,
          create_graph: bool = True) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], Tensor]:
    """Inner step ``t``: the support loss at ``current`` and the updated weights and Adam moments."""
    loss, grads = _loss_and_grads(loss_fn, model, current, batch, names, create_graph and not first_order, frozen)
    if first_order:
        grads = tuple(g.detach() for g in grads)
    if clip_grad_norm is not None:
        total = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        coef = torch.clamp(clip_grad_norm / (total + 1e-6), max=1.0)
        grads = tuple(g * coef for g in grads)
    b1, b2 = betas
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


def adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batch: Batch,
    *,
    steps: int,
    lr: LearningRate,
    first_order: bool = False,
    optimizer: Literal["sgd", "adam"] = "sgd",
    clip_grad_norm: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    loss_fn: LossFn = lm_loss,
    frozen: Mapping[str, Tensor] | None = None,
    check_finite: bool = False,
    recompute: bool = False,
    proximal: float = 0.0,
) -> dict[str, Tensor]:
    """Adapt fast weights to a support batch with ``steps`` gradient steps; a pure function.

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
        steps: Number of inner steps (0 returns ``params`` unchanged).
        lr: A float, or a dict name -> tensor of learned rates (Meta-SGD, MAML++). A tensor with as
            many dims as its parameter (or fewer) broadcasts to it; one with an extra leading dim
            is per step (``[steps, ...]``, row ``t`` used at step ``t``), e.g. ``[steps, 1, 1]`` for
            a per-step per-tensor rate.
        first_order: If False, the inner gradients are part of the graph (``create_graph=True``)
            and the result is differentiable w.r.t. ``params`` and ``lr`` to second order (MAML).
            If True, each step is ``p - lr * g.detach()``: the result stays connected to ``params``
            through the identity, so backpropagating a query loss gives exactly the first-order
            (FOMAML) meta-gradient, the query gradient at the adapted weights.
        optimizer: ``sgd`` or ``adam`` (a differentiable Adam with bias correction, its state
            starting at zero for every call).
        clip_grad_norm: If set, each step's gradients are scaled so their global norm is at most this.
        betas: Adam's ``(beta1, beta2)``.
        eps: Adam's epsilon.
        loss_fn: ``loss_fn(model, params, batch) -> scalar``; default :func:`metalm.losses.lm_loss`.
        frozen: Tensors by name used in place of the model's own but never adapted nor
            differentiated by the inner loop (e.g. a trained run's shared weights), so they are
            passed as values instead of being written into the model. The returned dict holds
            the fast weights only: pass ``{**frozen, **adapted}`` to score with both.
        check_finite: Raise :class:`metalm.NonFiniteError` if an adapted weight holds NaN or inf
            (a too large ``lr``, a NaN in the model). Off by default: it costs a device sync and
            cannot run under ``vmap``; the trainer instead checks the meta-gradient before each
            outer update (``max_nonfinite_steps``).
        recompute: Second order only: keep no inner step's graph, and recompute each step (its
            forward and inner backward) while the meta-backward passes through it
            (:mod:`metalm.recompute`): memory of one step's graph instead of ``steps`` of them,
            for about one more forward and backward per step. The same meta-gradient. Not
            under ``vmap``.
        proximal: Add ``proximal/2 ||phi - params||^2`` to the support loss, anchored at the
            starting values as constants (iMAML's regularized inner problem); 0 = off.

    Returns:
        The adapted fast weights, a new dict with the same names.

    Raises:
        NonFiniteError: With ``check_finite``, naming the first non-finite tensor.
        ConfigError: On a bad ``steps``, ``lr``, ``optimizer`` or ``clip_grad_norm``.
        BatchError: On a malformed batch.
        MetalmError: For second-order adaptation with an attention kernel lacking double backward.

    Example:
        >>> fast = selection.fast_params(model)
        >>> adapted = metalm.adapt(model, fast, support, steps=5, lr=0.1)
        >>> metalm.lm_loss(model, adapted, query).backward()  # MAML meta-gradient on the init
    """
    adapted = _inner_loop(model, params, batch, steps, lr, first_order, optimizer, clip_grad_norm, betas, eps,
                          loss_fn, frozen, keep_history=False, recompute=recompute,
                          proximal=proximal).params[-1]
    if check_finite:
        bad = next((k for k, v in adapted.items() if not bool(torch.isfinite(v).all())), None)
        if bad is not None:
            raise NonFiniteError(f"adapt: {bad!r} is NaN or infinite after {steps} step(s) at lr {_lr_text(lr)}; "
                                 "lower the learning rate or check the model's weights")
    return adapted


def _lr_text(lr: LearningRate) -> str:
    return f"{lr:g}" if isinstance(lr, (int, float)) else "(learned rates)"
