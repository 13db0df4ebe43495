"""Statistics of few-shot evaluation: intervals over episodes and paired comparisons of methods.

Every method is scored on the same episodes, so two methods are compared on their per-episode
*differences* (a paired design): the episode-to-episode variation that both share (an easy or a
hard support set) cancels, and the interval of the difference is much narrower than the two
methods' own intervals suggest. Intervals and p-values use Student's t on the paired differences
(a paired t-test); the minimum detectable difference is that of a two-sided test at 5% with 80%
power, given the observed spread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats as _st


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom."""
    return float(_st.t.ppf(q, df))


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval over ``values`` (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(0.975, n - 1) * sd / math.sqrt(n)


def paired(values: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """Paired comparison of ``values`` with ``reference``, unit by unit (e.g. per episode).

    Returns:
        ``diff`` (mean of ``values - reference``), ``ci95`` (half-width of its 95% t-interval),
        ``p`` (two-sided paired t-test; with no spread: 0 if the difference is not 0, else 1),
        ``mde80`` (the smallest true difference a two-sided 5% test detects with 80% power at this
        spread and number of units) and ``n``.

    Raises:
        ValueError: If the sequences differ in length or are empty.
    """
    if len(values) != len(reference) or not values:
        raise ValueError(f"paired comparison needs two equally long, non-empty sequences "
                         f"({len(values)} vs {len(reference)})")
    d = [a - b for a, b in zip(values, reference, strict=True)]
    n = len(d)
    diff = sum(d) / n
    if n < 2:
        return {"diff": diff, "ci95": math.nan, "p": math.nan, "mde80": math.nan, "n": n}
    sd = math.sqrt(sum((x - diff) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    # Exact arithmetic can leave a spread of a few ulps when every difference is the same.
    if se <= 1e-12 * max(1.0, abs(diff)):
        return {"diff": diff, "ci95": 0.0, "p": 0.0 if abs(diff) > 1e-12 else 1.0, "mde80": 0.0, "n": n}
    t = diff / se
    p = float(2 * _st.t.sf(abs(t), n - 1))
    mde = (t_quantile(0.975, n - 1) + t_quantile(0.8, n - 1)) * se
    return {"diff": diff, "ci95": t_quantile(0.975, n - 1) * se, "p": p, "mde80": mde, "n": n}


def episodes_for(mde: float, sd: float, *, power: float = 0.8, alpha: float = 0.05) -> int:
    """Units (episodes) a paired two-sided t-test needs to detect a true difference ``mde`` with the
    given power, when the per-unit differences have standard deviation ``sd``."""
    n = 2
    while (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n) > mde:
        n += 1
    return n
