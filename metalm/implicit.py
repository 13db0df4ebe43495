"""Implicit meta-gradients (Rajeswaran et al. 2019, "Meta-Learning with Implicit Gradients",
arXiv:1909.04630): linear solves with Hessian-vector products, no graph of the inner steps.

For an inner problem ``phi*(theta) = argmin L_s(phi) + lam/2 ||phi - theta||^2`` the meta-gradient
of a query loss is ``(I + H/lam)^-1 grad L_q(phi*)``, ``H`` the support loss's Hessian at ``phi*``.
Tensors travel as lists (one entry per fast weight).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Vectors = list[Tensor]
MatVec = Callable[[Vectors], Vectors]


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def conjugate_gradient(matvec: MatVec, b: Vectors, steps: int, rtol: float = 1e-10) -> Vectors:
    """Solve ``A x = b`` for a symmetric positive-definite ``A`` given as ``matvec`` (``steps`` CG
    iterations from ``x = 0``; exact in ``n`` iterations for ``n`` unknowns in exact arithmetic).
    Stops early once the residual's norm is below ``rtol`` times ``b``'s."""
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rs = _dot(r, r)
    stop = float(rs) * rtol ** 2
    for _ in range(steps):
        if float(rs) <= stop:
            break
        ap = matvec(p)
        alpha = rs / _dot(p, ap)
        x = [xi + alpha * pi for xi, pi in zip(x, p, strict=True)]
        r = [ri - alpha * api for ri, api in zip(r, ap, strict=True)]
        rs_new = _dot(r, r)
        p = [ri + (rs_new / rs) * pi for ri, pi in zip(r, p, strict=True)]
        rs = rs_new
    return x


def neumann(hvp: MatVec, b: Vectors, lam: float, steps: int) -> Vectors:
    """``(I + H/lam)^-1 b`` by the Neumann series ``sum_j (-H/lam)^j b`` truncated after ``steps``
    terms (converges when the Hessian's spectral radius is below ``lam``)."""
    x = [t.clone() for t in b]
    term = b
    for _ in range(steps):
        term = [-h / lam for h in hvp(term)]
        x = [xi + ti for xi, ti in zip(x, term, strict=True)]
    return x


def implicit_gradient(hvp: MatVec, query_grad: Vectors, lam: float, steps: int, solver: str = "cg") -> Vectors:
    """``(I + H/lam)^-1 query_grad``, ``hvp(v) = H v``: by conjugate gradient or the Neumann series."""
    if solver == "neumann":
        return neumann(hvp, query_grad, lam, steps)

    def matvec(v: Vectors) -> Vectors:
        return [vi + hi / lam for vi, hi in zip(v, hvp(v), strict=True)]

    return conjugate_gradient(matvec, query_grad, steps)
