"""ANIL, "Almost No Inner Loop" (Raghu et al. 2020, "Rapid Learning or Feature Reuse?",
arXiv:1909.09157): MAML whose inner loop adapts only the head (or the top layers) while the outer
loop meta-learns the body. Select ``adapter.kind: head`` (or a ``top:K`` layer range) for the
inner loop and ``meta.shared`` (e.g. ``all``) for the body the outer loop learns. Registered as
:class:`~metalm.algorithms.MAML` with this config.
"""

from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from ..params import ParameterSelection
from .base import register_algorithm
from .maml import MAML, MAMLConfig


@dataclasses.dataclass
class ANILConfig(MAMLConfig):
    """MAML's config; ANIL differs in which tensors the inner loop may touch."""

    def check_selection(self, selection: ParameterSelection) -> None:
        """Refuse an inner loop that reaches the lowest decoder layer (that is not "almost no inner loop").

        Raises:
            ConfigError: If a fast weight lies in layer 0.
        """
        low = [n for n in selection.fast if selection.layer_of.get(n, -1) == 0]
        if low:
            raise ConfigError("adapter", f"anil adapts the head or top layers only, but {low[0]!r} is in layer 0; "
                                         f"use adapter.kind: head or adapter.layers: top:K")


register_algorithm("anil", ANILConfig)(MAML)
