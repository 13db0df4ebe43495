"""The settings of few-shot evaluation (:class:`EvalConfig`) and the methods it can name.

Methods:

* ``zeroshot``: the pretrained model (standard adapter initialization, i.e. LoRA's zero update);
* ``icl``: the K support examples as demonstrations in the prompt (:mod:`metalm.data.demos`);
* ``zeroshot-cal``, ``icl-cal``: the same with contextual calibration (Zhao et al. 2021, "Calibrate
  Before Use"): option probabilities divided by their mean over content-free inputs
  (``N/A``, empty, ``[MASK]`` in place of the input fields);
* ``zeroshot-channel``, ``icl-channel``: channel scoring (Min et al. 2022): each option ranked by
  the likelihood of the input given the option (and channel demonstrations);
* ``finetune``: the inner loop from the standard initialization, with the optimizer, learning rate
  and steps chosen on meta-val tasks (never on held-out ones);
* ``meta``, ``mtl``: trained initializations (a meta-learning run, a multi-task run) adapted by
  their run's inner loop; ``hyper``: the fast weights a HyperLoRA run's hypernetwork writes from
  the support set (amortized: no inner loop unless the run refines); ``library-hub``,
  ``library-mean``, ``library-arrow``: a LoRA library's compositions for the support set; ``meta@ft`` / ``mtl@ft`` /
  ``hyper@ft`` ... also adapt them with fine-tuning's chosen
  budget, so no method wins by having more steps; with ``calibrate_trained`` each is also scored
  with contextual calibration (``meta-cal`` ...), as ``icl-cal`` scores ``icl``; with
  ``in_context_trained`` a row trained on plain queries is also scored after the support set as
  demonstrations (``mtl+icl``: gradient + in-context adaptation at evaluation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

from ..algorithms.base import algorithms_of_row, row_kinds
from ..data import Task, TaskRegistry
from ..errors import ConfigError, TaskError
from .rows import UNADAPTED

__all__ = ["BASELINES", "CONTENT_FREE", "DEFAULT_METHODS", "EvalConfig", "default_methods", "eval_tasks",
           "known_methods", "trained_by"]

BASELINES = (*UNADAPTED, "finetune")
#: The methods evaluated when none are named (``metalm.evaluate`` adds the rows of the runs it is given).
DEFAULT_METHODS = ("zeroshot", "zeroshot-cal", "icl", "icl-cal", "finetune")


def known_methods() -> list[str]:
    """Every method an evaluation can name: the baselines and the row of every registered algorithm
    (:attr:`MetaLearner.row <metalm.algorithms.MetaLearner.row>`: ``meta``, ``mtl`` ..., and any a
    researcher registers)."""
    return [*BASELINES, *row_kinds()]


def default_methods(kinds: Sequence[str]) -> list[str]:
    """The methods evaluated when none are named: the baselines plus the rows the runs give (``kinds``)."""
    return [*DEFAULT_METHODS, *(k for k in row_kinds() if k in kinds)]


def trained_by(kind: str) -> str:
    """What a trained row needs, in words (for errors): a run of an algorithm registered with that row."""
    names = algorithms_of_row(kind)
    if not names:
        return "a trained run (--run-dir)"
    return f"a run trained with algorithm: {names[0]}" if len(names) == 1 else \
        f"a run trained with one of the algorithms {', '.join(names)}"


CONTENT_FREE = ["N/A", "", "[MASK]"]  # Zhao et al. 2021, section 5


@dataclasses.dataclass
class EvalConfig:
    """Settings of few-shot evaluation (the fields of ``metalm eval``'s ``key=value`` overrides).

    Attributes:
        shots: Shot counts K to evaluate.
        episodes: Episodes per task, shot count and seed.
        seeds: Independent sets of evaluation episodes (seeds ``seed``, ``seed + 1``, ...); the
            report gives each method's mean and worst over them (as MetaICL reports 5 seeds).
        ways: Classes per classification episode.
        queries: Query examples per class (classification) or per episode.
        methods: Methods to compare (see the module doc); by default the baselines ``DEFAULT_METHODS``
            (:func:`metalm.evaluate` without ``methods`` adds the rows of the runs it is given).
        seed: Seed of the first set of evaluation episodes.
        reference: The method every other is compared with (paired differences); default: the
            best baseline by macro mean at each shot count.
        finetune_optimizers: Optimizers of fine-tuning's grid (``sgd``, ``adam``).
        finetune_lrs: SGD learning rates of the grid.
        finetune_adam_lrs: Adam learning rates of the grid.
        finetune_steps: Step counts of the grid (``None``: the meta-learner's inner steps only).
        val_episodes: Episodes per meta-val task for that choice.
        inner_steps: Also evaluate ``finetune`` and the trained rows at these inner step counts
            (first shot count, first seed), for the accuracy-vs-inner-steps curve; ``None``: off.
        calibrate_trained: Also score every trained row with contextual calibration, as a row
            ``<row>-cal`` (in-context rows as ``icl-cal``, the others as ``zeroshot-cal``; rows
            scored by channel are left out, and generation has no options to calibrate).
        in_context_trained: Also score every trained row whose queries are plain after the support
            set as demonstrations, with the same adapted weights, as a row ``<row>+icl`` (and
            ``<row>+icl-cal`` with ``calibrate_trained``): its weights adapt on the support set and
            then see it in the prompt too, as ``icl`` scores the pretrained weights.
        content_free: Inputs of contextual calibration.
        permute_verbalizers: Shuffle the verbalized answers among each episode's classes, so the
            answer can only be learned from the support set (synthetic in-context tasks).
        max_length: Most tokens per scored row (demonstrations included); a longer row loses its
            oldest demonstrations, counted in the report's ``truncated``. ``None`` (the default): the
            model's window (``max_position_embeddings``), so the asked shots are never cut.
        max_new_tokens: Longest generated answer.
        batch_size: Rows per scoring forward pass.
        shared_work: Do the work methods share once (see the module doc); ``False`` computes every
            method on every episode on its own (the reference path, same accuracies).
        cost_episodes: Also measure what a new task costs each row on its own, adapting and
            scoring with nothing shared with other rows or episodes: seconds and forward tokens of
            the first ``cost_episodes`` episodes of each task and shot count (first seed), after
            the accuracies (:func:`~metalm.eval.episode_cost.episode_costs`; 0: not measured).
        autocast: Precision of every forward and backward pass: ``float32`` (the default, on any
            device) or ``bf16`` autocast (matrix products in bfloat16, scores and losses upcast to
            float32; 1.6-2.3x faster per row on a CPU with AVX512-BF16). Fast weights and their
            updates stay float32. Figures differ from float32's (on the benchmark up to 15% of episodes
            change: ``benchmarks/fewshot/eval_bf16.py``), so compare rows in one precision; a CPU
            without AVX512-BF16 or AMX emulates bf16 and is several times slower.
        rows: Score only these rows, by their names in the report (``mtl-cal``, ``meta:fomaml@ft``,
            ``icl``): a comparison that needs one row of a trained run's family (the row chosen on
            meta-val) pays for that row alone. ``None`` (the default): every row ``methods`` give.
            Fine-tuning's budget is still chosen when ``finetune`` is among the methods (``@ft`` rows
            take it). A name no row has is refused before anything is measured, listing the rows.
    """

    shots: list[int] = dataclasses.field(default_factory=lambda: [4])
    episodes: int = 20
    seeds: int = 1
    ways: int = 3
    queries: int = 4
    methods: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_METHODS))
    seed: int = 1234
    reference: str | None = None
    finetune_optimizers: list[str] = dataclasses.field(default_factory=lambda: ["sgd", "adam"])
    finetune_lrs: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0])
    finetune_adam_lrs: list[float] = dataclasses.field(default_factory=lambda: [1e-3, 3e-3, 1e-2])
    finetune_steps: list[int] | None = dataclasses.field(default_factory=lambda: [5, 10, 20])
    val_episodes: int = 2
    inner_steps: list[int] | None = None
    calibrate_trained: bool = False
    in_context_trained: bool = False
    content_free: list[str] = dataclasses.field(default_factory=lambda: list(CONTENT_FREE))
    permute_verbalizers: bool = False
    max_length: int | None = None
    max_new_tokens: int = 12
    batch_size: int = 16
    shared_work: bool = True
    cost_episodes: int = 0
    autocast: Literal["float32", "bf16"] = "float32"
    rows: list[str] | None = None

    def __post_init__(self) -> None:
        known = known_methods()
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ConfigError("methods", f"unknown method {unknown[0]!r} (known: {', '.join(known)})")
        if not self.methods:
            raise ConfigError("methods", "needs at least one method")
        if not self.shots or min(self.shots) < 1:
            raise ConfigError("shots", "needs shot counts >= 1")
        for key in ("episodes", "seeds", "queries", "val_episodes", "max_length", "max_new_tokens", "batch_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")
        if isinstance(self.cost_episodes, bool) or self.cost_episodes < 0:
            raise ConfigError("cost_episodes", f"must be >= 0 (0: not measured), got {self.cost_episodes}")
        if self.autocast not in ("float32", "bf16"):
            raise ConfigError("autocast", f"must be float32 or bf16, got {self.autocast!r}")
        if self.rows is not None and (not self.rows or not all(isinstance(r, str) and r for r in self.rows)):
            raise ConfigError("rows", f"name at least one row by its report name (or null: every row), "
                                      f"got {self.rows!r}")
        if self.ways < 2:
            raise ConfigError("ways", f"must be >= 2, got {self.ways}")
        bad = [o for o in self.finetune_optimizers if o not in ("sgd", "adam")]
        if bad:
            raise ConfigError("finetune_optimizers", f"{bad[0]!r} is not one of sgd, adam")
        if "finetune" in self.methods:
            if not self.finetune_optimizers:
                raise ConfigError("finetune_optimizers", "the fine-tuning grid is empty")
            for opt in self.finetune_optimizers:
                key = "finetune_lrs" if opt == "sgd" else "finetune_adam_lrs"
                if not getattr(self, key):
                    raise ConfigError(key, f"the fine-tuning grid has no {opt} learning rate")
            if self.finetune_steps is not None and not self.finetune_steps:
                raise ConfigError("finetune_steps", "the fine-tuning grid is empty (null: the run's inner steps)")
        for key in ("finetune_lrs", "finetune_adam_lrs"):
            if any(not lr > 0 or lr == float("inf") for lr in getattr(self, key)):
                raise ConfigError(key, "learning rates must be finite and > 0")
        if self.finetune_steps and min(self.finetune_steps) < 1:
            raise ConfigError("finetune_steps", "step counts must be >= 1")
        if self.inner_steps is not None and (not self.inner_steps or min(self.inner_steps) < 1):
            raise ConfigError("inner_steps", "needs step counts >= 1 (or null)")
        # A reference named like a method must be an evaluated method; a trained row's other names
        # (meta:maml, library-hub ...) are checked against the rows (metalm.eval.recipe.check_reference).
        if self.reference in known_methods() and self.reference not in self.methods:
            raise ConfigError("reference", f"{self.reference!r} is not among the evaluated methods "
                                           f"({', '.join(self.methods)})")

    def grid(self, default_steps: int) -> list[tuple[str, float, list[int]]]:
        """Fine-tuning's grid: ``(optimizer, lr, step counts)`` (one inner-loop trajectory each)."""
        steps = sorted(set(self.finetune_steps or [default_steps]))
        return [(opt, lr, steps) for opt in self.finetune_optimizers
                for lr in (self.finetune_lrs if opt == "sgd" else self.finetune_adam_lrs)]


def eval_tasks(registry: TaskRegistry, names: list[str]) -> list[Task]:
    """Tasks to evaluate; language-modeling tasks have no accuracy and are refused."""
    tasks = [registry[n] for n in names]
    lm = [t.name for t in tasks if t.spec.type == "language_modeling"]
    if lm:
        raise TaskError("tasks", f"{lm[0]!r} is a language-modeling task: few-shot accuracy does not apply")
    return tasks
