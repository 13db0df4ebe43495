"""The rows of an evaluation as values: what each row starts from, how it adapts, how its queries
are presented, expanded from the evaluated methods by one function (:func:`expand_rows`).

A row is a :class:`Row`: a name, an initialization (``None``: the pretrained weights, not adapted:
zero-shot and in-context rows) and a :class:`Presentation` (the queries alone or after the support
set as demonstrations; option ranked by ``P(option | input)`` or, channel, ``P(input | option)``;
contextual calibration or not). A row that scores another row's adapted weights differently (a
trained row's ``-cal`` or ``+icl`` variant) names that row as its ``twin``, so one adaptation
serves both. Fine-tuning's budget, chosen on meta-val tasks, is a value too
(:class:`FinetuneChoice`), passed to :func:`expand_rows` like the trained rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .inits import Init

__all__ = ["UNADAPTED", "FinetuneChoice", "Presentation", "Row", "Trained", "budget", "expand_rows"]


@dataclasses.dataclass(frozen=True)
class Presentation:
    """How a row's queries are presented and scored.

    Attributes:
        demos: After the support set as demonstrations (in-context), else alone.
        channel: Each option ranked by the likelihood of the input given the option (Min et al.
            2022, "Noisy Channel Language Model Prompting"), else of the option given the input.
        calibrate: Option probabilities divided by their mean over content-free inputs (Zhao et al.
            2021, "Calibrate Before Use"); not with ``channel``.
    """

    demos: bool = False
    channel: bool = False
    calibrate: bool = False

    @classmethod
    def of(cls, init: Init) -> Presentation:
        """The presentation an initialization's run was trained for (``Init.queries``, ``Init.calibrate``)."""
        return cls(demos=init.queries != "plain", channel=init.queries == "channel", calibrate=init.calibrate)


# The rows of the pretrained weights, not adapted: the baselines that read the support set in the prompt or not.
UNADAPTED: dict[str, Presentation] = {
    "zeroshot": Presentation(),
    "zeroshot-cal": Presentation(calibrate=True),
    "zeroshot-channel": Presentation(channel=True),
    "icl": Presentation(demos=True),
    "icl-cal": Presentation(demos=True, calibrate=True),
    "icl-channel": Presentation(demos=True, channel=True),
}


@dataclasses.dataclass
class Trained:
    """A trained initialization evaluated as a row: ``label`` (e.g. ``meta:maml``), ``kind``
    (``meta``, ``mtl``, ``hyper`` or ``library``: the method that enables it) and its :class:`Init`."""

    label: str
    kind: str
    init: Init


@dataclasses.dataclass(frozen=True)
class Row:
    """One evaluated row.

    Attributes:
        name: The row's name in the report (``icl-cal``, ``finetune``, ``meta:maml@ft`` ...).
        presentation: How its queries are presented and scored.
        init: Where adaptation starts and how it proceeds; ``None``: the pretrained weights, not adapted.
        twin: The row whose adapted weights this one scores (same initialization and inner loop,
            another presentation); ``None``: its own.
        own_budget: Whether it adapts with its own inner loop (``False``: a trained row given
            fine-tuning's chosen budget, ``@ft``).
    """

    name: str
    presentation: Presentation
    init: Init | None = None
    twin: str | None = None
    own_budget: bool = True

    @property
    def weights(self) -> str:
        """The name of the row whose adaptation this row's weights come from."""
        return self.twin or self.name


@dataclasses.dataclass
class FinetuneChoice:
    """Fine-tuning's budget chosen on meta-val tasks: the initialization it adapts with, the grid it
    was chosen from (``[{"optimizer", "lr", "steps", "val_accuracy"}, ...]``) and, when the grid was
    measured, the chosen point against the runner-up on the same meta-val episodes (``versus``:
    ``{"runner_up", "diff", "ci95", "p", "n", "separated"}``; not separated: the choice fell on noise)."""

    init: Init
    grid: list[dict[str, Any]]
    versus: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """The choice as the report and the journal hold it."""
        ft = self.init.inner
        out = {"optimizer": ft.optimizer, "lr": ft.lr, "steps": ft.steps, "grid": self.grid}
        return out if self.versus is None else {**out, "versus": self.versus}

    @classmethod
    def from_record(cls, base: Init, record: dict[str, Any]) -> FinetuneChoice:
        """The choice :meth:`record` wrote, on the pretrained initialization ``base``."""
        return cls(base.with_budget(record["optimizer"], record["lr"], record["steps"]), list(record["grid"]),
                   record.get("versus"))

    def warning(self) -> str | None:
        """One line when the chosen budget is not separated from the runner-up on meta-val, else None."""
        v = self.versus
        if v is None or v["separated"]:
            return None
        r = v["runner_up"]
        ci = "one episode, no interval" if v["ci95"] is None else \
            f"paired 95% [{v['diff'] - v['ci95']:+.3f}, {v['diff'] + v['ci95']:+.3f}]"
        return (f"metalm eval: warning: fine-tuning's budget was chosen on noise: on the meta-val episodes it "
                f"beats the runner-up ({r['optimizer']} lr {r['lr']:g}, {r['steps']} steps) by {v['diff']:+.3f} "
                f"({ci}, {v['n']} episodes): meta-val does not tell the grid's points apart; widen meta-val, or fix "
                f"the budget by a rule written before the runs (finetune_lrs=..., finetune_steps=...)")


def expand_rows(methods: Sequence[str], base: Init, trained: Sequence[Trained] = (),
                finetune: FinetuneChoice | None = None, *, in_context_trained: bool = False,
                calibrate_trained: bool = False, any_budget: bool = False) -> list[Row]:
    """Every row ``methods`` (an :class:`~metalm.eval.EvalConfig`'s) ask for: the unadapted baselines,
    ``finetune`` (from ``base`` with the chosen budget, or ``base``'s own inner loop before it is
    chosen), then each trained initialization with its variants: ``+icl`` (``in_context_trained``),
    ``-cal`` (``calibrate_trained``; not for channel rows) and ``@ft`` (fine-tuning's chosen budget,
    when it differs from the row's own; with ``any_budget`` and no ``finetune``, every ``@ft`` row a choice
    may add, each with the row's own budget: for their names, before the choice)."""
    rows = [Row(name, presentation) for name, presentation in UNADAPTED.items() if name in methods]
    if "finetune" in methods:
        rows.append(Row("finetune", Presentation(), finetune.init if finetune else base))
    for t in trained:
        if t.kind not in methods:
            continue
        own = Presentation.of(t.init)
        variants = [(t.label, own)]
        if in_context_trained and not own.demos:
            variants.append((f"{t.label}+icl", dataclasses.replace(own, demos=True)))
        for name, presentation in variants:
            rows.append(Row(name, presentation, t.init, twin=None if name == t.label else t.label))
            if calibrate_trained and not presentation.channel:
                rows.append(Row(f"{name}-cal", dataclasses.replace(presentation, calibrate=True), t.init, twin=t.label))
        ft = finetune.init if finetune else None
        if ft is not None and not t.init.same_budget(ft) and t.init.route is None:
            rows.append(Row(f"{t.label}@ft", own, t.init.with_budget(ft.inner.optimizer, ft.inner.lr, ft.inner.steps),
                            own_budget=False))
        elif any_budget and finetune is None and "finetune" in methods and t.init.route is None:
            rows.append(Row(f"{t.label}@ft", own, t.init, own_budget=False))
    return rows


def budget(init: Init, presentation: Presentation | None = None) -> str:
    """A row's adaptation in words, e.g. ``adam lr 0.003, 10 steps`` (``presentation``: how its queries
    are presented, by default as its run was trained)."""
    how = presentation or Presentation.of(init)
    icl = "" if not how.demos else f"; scored in context ({'channel' if how.channel else 'direct'})"
    icl += "; calibrated" if how.calibrate else ""
    generated = "generated from the support set" if init.generate else "routed per token (Arrow)" if init.route else ""
    if not init.adapt:
        return (generated or "none") + icl
    generated += ", then " if generated else ""
    lr = "learned rates" if init.lr is not None else f"lr {init.inner.lr:g}"
    prox = f", proximal {init.inner.proximal:g}" if init.inner.proximal else ""
    return f"{generated}{init.inner.optimizer} {lr}, {init.inner.steps} steps{prox}" + icl
