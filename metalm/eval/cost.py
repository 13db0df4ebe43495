"""What adapting to a new task costs: wall seconds and the tokens the model reads to do it.

Adaptation is what a method does with a new task's support set before it scores a query: gradient
steps (fine-tuning, meta-learned initializations), one forward pass that writes weights (HyperLoRA),
a search over compositions (a LoRA library's LoraHub rows). Its cost is measured the same way for
every row: wall-clock seconds and the tokens that pass through the model's top decoder layer (one
count per token per forward pass, whatever computed it: a cached frozen prefix still runs the upper
layers, so it is counted there). In-context rows adapt by reading their demonstrations with each
query instead; their cost is in the scoring, not here.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch import nn

from ..models import decoder_layers


class AdaptationCost:
    """Seconds and forward tokens of each row's adaptations, gathered while :meth:`measure` is open.

    Args:
        model: The (adapter-wrapped) causal LM whose top decoder layer counts the tokens.
    """

    def __init__(self, model: nn.Module) -> None:
        prefix, n = decoder_layers(model)
        self.top = model.get_submodule(f"{prefix}.{n - 1}")
        self.records: dict[str, list[tuple[float, int]]] = {}

    @contextlib.contextmanager
    def measure(self, row: str) -> Iterator[None]:
        """Record one adaptation of ``row``: the wall time of the block and the tokens the top layer saw."""
        tokens = [0]

        def count(_module: nn.Module, args: tuple[Any, ...]) -> None:
            hidden = args[0] if args else None
            if hidden is not None and hasattr(hidden, "shape") and hidden.dim() >= 2:
                tokens[0] += int(hidden.shape[0]) * int(hidden.shape[1])

        handle = self.top.register_forward_pre_hook(count)
        start = time.perf_counter()
        try:
            yield
        finally:
            handle.remove()
        self.records.setdefault(row, []).append((time.perf_counter() - start, tokens[0]))

    def summary(self) -> dict[str, dict[str, float]]:
        """Per row: mean seconds and forward tokens per adaptation, and how many adaptations."""
        return {row: {"seconds": statistics.fmean(s for s, _ in recs), "forward_tokens": statistics.fmean(
            t for _, t in recs), "adaptations": len(recs)} for row, recs in sorted(self.records.items())}


def format_costs(costs: Mapping[str, Mapping[str, float]], rows: Sequence[str] | None = None) -> str:
    """A markdown table of :meth:`AdaptationCost.summary`."""
    lines = ["| row | seconds per new task | forward tokens per new task | adaptations measured |", "|---|---|---|---|"]
    for row in rows or list(costs):
        if row in costs:
            c = costs[row]
            lines.append(f"| {row} | {c['seconds']:.3f} | {c['forward_tokens']:,.0f} | {c['adaptations']} |")
    return "\n".join(lines)
