"""MetaICL (Min et al. 2022, "MetaICL: Learning to Learn In Context", arXiv:2110.15943).

Meta-training for in-context learning: each episode's queries are written after its support set
as demonstrations (:func:`metalm.data.demos.training_rows`), and the outer step minimizes the loss
of the queries' answers (direct) or of their inputs given the answers (channel) over many tasks::

    L(θ) = 1/n Σ_i L(θ; demos(support_i) + query_i)

There is no inner loop: a trained MetaICL model adapts to a new task in its forward pass, and
``metalm eval`` scores its row by in-context learning. It trains the same weights as the other
algorithms (the adapter's initialization and any ``meta.shared`` base weights).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

from ..config import InnerConfig
from ..data.episode import Episode
from ..errors import ConfigError
from ..losses import lm_loss_and_accuracy
from .base import MetaLearner, register_algorithm


@dataclasses.dataclass
class MetaICLConfig:
    """MetaICL's outer step.

    Attributes:
        queries: How a query follows its demonstrations: ``direct`` (loss on the answer after the
            demonstrations and the input) or ``channel`` (loss on the input after the demonstrations
            and the answer); the same field as the gradient learners' ``queries``.
        scoring: The earlier name of ``queries`` (runs written before 2026-12-04 keep loading).
        inner: Unused by training; kept so evaluation's ``@ft`` rows and tools that read a run's
            inner loop find one.
    """

    queries: Literal["direct", "channel"] = "direct"
    scoring: Literal["direct", "channel"] | None = None
    inner: InnerConfig = dataclasses.field(default_factory=lambda: InnerConfig(first_order=True))

    def __post_init__(self) -> None:
        if self.scoring is not None:  # the earlier name
            if self.scoring not in ("direct", "channel"):
                raise ConfigError("algorithm.scoring", f"{self.scoring!r} is not one of direct, channel")
            self.queries, self.scoring = self.scoring, None
        if self.queries not in ("direct", "channel"):
            raise ConfigError("algorithm.queries", f"{self.queries!r} is not one of direct, channel")


@register_algorithm("metaicl", MetaICLConfig)
class MetaICL(MetaLearner):
    """Train the meta-parameters on in-context rows (demonstrations + query), no inner loop."""

    @classmethod
    def needs_double_backward(cls, config: Any) -> bool:
        """Never: no gradient of a gradient (its inner config only serves evaluation or is first-order)."""
        return False

    @classmethod
    def evaluation(cls, config: MetaICLConfig) -> dict[str, Any]:
        """No adaptation; queries scored after the support set as demonstrations, as trained."""
        return {"adapt": False, "queries": config.queries}

    def meta_gradients(self, episodes: Sequence[Episode]) -> dict[str, float]:
        """Mean in-context query loss of the episodes, backpropagated into the meta-parameters."""
        params = self.selection.meta_params(self.model)
        losses, accs = [], []
        for ep in episodes:
            loss, acc = lm_loss_and_accuracy(self.model, params, ep.query)
            (loss / len(episodes)).backward()
            losses.append(float(loss.detach()))
            accs.append(float(acc))
        return {"query_loss": sum(losses) / len(losses), "query_accuracy": sum(accs) / len(accs)}
