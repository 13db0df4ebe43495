"""What adapting to a new task costs: wall seconds and the tokens the model reads to do it.

Adaptation is what a method does with a new task's support set before it scores a query: gradient
steps (fine-tuning, meta-learned initializations), one forward pass that writes weights (HyperLoRA),
a search over compositions (a LoRA library's LoraHub rows). Its cost is measured the same way for
every row: wall-clock seconds and the tokens that pass through the model's top decoder layer (one
count per token per forward pass, whatever computed it: a cached frozen prefix still runs the upper
layers, so it is counted there). In-context rows adapt by reading their demonstrations with each
query instead; their cost is in the scoring, not here.

What a new task costs a row as a whole, adaptation and scoring of its queries together, is measured
apart (:mod:`metalm.eval.episode_cost`, ``EvalConfig.cost_episodes``): each row alone on each
episode, with nothing shared with another row or episode, as one user of one method pays it. That is
the cost axis of the accuracy/cost comparison (:func:`pareto_front`, ``metalm report``'s Pareto plot):
in-context rows pay per query, for a context that grows with the shots; gradient rows pay their
inner steps over the support set; amortized rows one forward pass.
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


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """The names of ``points`` (``name -> (cost, accuracy)``) that no other point dominates: none costs
    at most as much and is at least as accurate, better in one of the two. Sorted by cost."""
    front = [name for name, (c, a) in points.items()
             if not any(c2 <= c and a2 >= a and (c2 < c or a2 > a) for c2, a2 in points.values())]
    return sorted(front, key=lambda name: points[name])


def cost_table(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One line per row and shot count of ``report["episode_cost"]`` with its macro accuracy and whether
    it is on the accuracy/seconds Pareto front of its shot count (rows without a cost are left out)."""
    costs = report.get("episode_cost") or {}
    accuracy = {(r["method"], r["shots"]): r for r in report["macro"]}
    lines = []
    for shots in sorted({r["shots"] for r in report["macro"]}):
        here = {row: (c[str(shots)]["seconds"], accuracy[row, shots]["accuracy"]) for row, c in costs.items()
                if str(shots) in c and (row, shots) in accuracy}
        front = set(pareto_front(here))
        for row in sorted(here, key=lambda r: here[r]):
            c = costs[row][str(shots)]
            lines.append({"row": row, "shots": shots, "accuracy": accuracy[row, shots]["accuracy"],
                          "ci95": accuracy[row, shots]["ci95"], "seconds": c["seconds"],
                          "forward_tokens": c["forward_tokens"], "episodes": c["episodes"], "front": row in front})
    return lines


def format_cost_table(report: Mapping[str, Any]) -> str:
    """A markdown table of :func:`cost_table` (empty string without costs)."""
    lines = cost_table(report)
    if not lines:
        return ""
    out = ["| row | shots | macro accuracy | seconds per new task | forward tokens per new task | Pareto front |",
           "|---|---|---|---|---|---|"]
    out += [f"| {x['row']} | {x['shots']} | {x['accuracy']:.3f} ± {x['ci95']:.3f} | {x['seconds']:.3f} | "
            f"{x['forward_tokens']:,.0f} | {'yes' if x['front'] else ''} |" for x in lines]
    return "\n".join(out)
