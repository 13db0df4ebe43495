"""MAML++ (Antoniou et al. 2019, "How to train your MAML", arXiv:1810.09502), the parts that apply
to language models: learned per-layer per-step inner rates (LSLR), the multi-step loss (MSL)
with annealed weights, and derivative-order annealing (first-order for the first outer steps).
Its batch-norm fixes have no counterpart in a transformer and are not implemented.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..errors import ConfigError
from .base import register_algorithm
from .maml import MAML, MAMLConfig


@dataclasses.dataclass
class MAMLPlusPlusConfig(MAMLConfig):
    """MAML's config with MAML++'s defaults: per-tensor per-step rates, MSL, and 50 first-order steps."""

    learn_lr: Literal["none", "per_tensor", "per_element"] = "per_tensor"
    lr_per_step: bool = True
    multi_step_loss: bool = True
    msl_anneal_steps: int = 100
    first_order_steps: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inner.first_order and self.first_order_steps:
            raise ConfigError("algorithm.first_order_steps", "inner.first_order is set, so there is no "
                                                             "second-order phase to anneal to")


# MAML with LSLR, the multi-step loss and derivative-order annealing.
register_algorithm("maml++", MAMLPlusPlusConfig)(MAML)
