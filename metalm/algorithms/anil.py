"""ANIL, "Almost No Inner Loop" (Raghu et al. 2020, "Rapid Learning or Feature Reuse?",
arXiv:1909.09157): MAML whose inner loop adapts only the head (or the top layers) while the outer
loop meta-learns the body. Select ``adapter.kind: head`` (or a ``top:K`` layer range) for the
inner loop and ``meta.shared`` (e.g. ``all``) for the body the outer loop learns.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..errors import ConfigError
from ..params import ParameterSelection
from .base import register_algorithm
from .maml import MAML, MAMLConfig


@dataclasses.dataclass
class ANILConfig(MAMLConfig):
    """MAML's config; ANIL differs in which tensors the inner loop may touch."""


@register_algorithm("anil", ANILConfig)
class ANIL(MAML):
    """MAML restricted to an inner loop over the head or top layers.

    Raises:
        ConfigError: If a fast weight lies in the lowest decoder layer (that is not "almost no
            inner loop").
    """

    name = "anil"

    def __init__(self, model: nn.Module, selection: ParameterSelection, config: ANILConfig) -> None:
        low = [n for n in selection.fast if selection.layer_of.get(n, -1) == 0]
        if low:
            raise ConfigError("adapter", f"anil adapts the head or top layers only, but {low[0]!r} is in layer 0; "
                                         f"use adapter.kind: head or adapter.layers: top:K")
        super().__init__(model, selection, config)
