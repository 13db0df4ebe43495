"""Meta-SGD (Li et al. 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
arXiv:1707.09835): MAML that also learns an inner learning rate for every element of every fast
weight, initialized to ``inner.lr``; the inner step is ``θ - α ∘ ∇L``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..errors import ConfigError
from .base import register_algorithm
from .maml import MAML, MAMLConfig


@dataclasses.dataclass
class MetaSGDConfig(MAMLConfig):
    """MAML's config with ``learn_lr`` defaulting to ``per_element`` (per tensor is allowed too)."""

    learn_lr: Literal["none", "per_tensor", "per_element"] = "per_element"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.learn_lr == "none":
            raise ConfigError("algorithm.learn_lr", "meta-sgd learns the inner rates: per_element or per_tensor")


# MAML with learned per-element inner learning rates (meta-parameters ``inner_lr/NAME``).
register_algorithm("meta-sgd", MetaSGDConfig)(MAML)
