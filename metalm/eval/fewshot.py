"""Few-shot evaluation on held-out tasks: every method on the same episodes (paired comparisons).

For each task, shot count and evaluation seed, ``episodes`` episodes are drawn from a seed fixed by
the task name, the shot count and the seed, so every method sees exactly the same support and
query examples. Methods:

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

Classification and multiple choice are scored by rank classification, generation by exact match
(calibration and channel scoring do not apply to generation: those rows equal their plain method
there). :mod:`metalm.eval.summary` turns the per-episode accuracies into means, intervals, paired
differences and per-seed figures.

Work shared by the methods is done once (``shared_work``): the support set's frozen layers and
the queries' frozen layers once per episode (:mod:`metalm.eval.prepared`), the unadapted methods'
queries of all of a block's episodes in the same forward passes, and one inner-loop trajectory per
fine-tuning optimizer and rate for every step count of the grid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch
from torch import Tensor

from ..algorithms.base import algorithms_of_row, row_kinds
from ..data import CollateConfig, EpisodeSampler, SamplerConfig, Task, TaskRegistry, collate
from ..data.demos import demonstrations, presented, with_demonstrations
from ..data.episode import Example, TextEpisode
from ..distributed import current, map_sharded
from ..errors import ConfigError, TaskError
from ..inner import UpdateRule, adapt_trajectory
from ..losses import cache_prefix, prepare_batch, split_by_length
from .cost import AdaptationCost
from .inits import Init, check_values, init_from_values, trained_rows
from .journal import Journal
from .prepared import PreparedQueries, prepare_queries, score_prepared
from .rows import UNADAPTED, FinetuneChoice, Presentation, Row, Trained, expand_rows
from .scoring import generation_score, greedy_generate, option_scores
from .summary import Measurements, query_baselines, summarize
from .truncation import truncation

if TYPE_CHECKING:
    from ..run import Run

__all__ = ["BASELINES", "Block", "EvalConfig", "FinetuneChoice", "Harness", "Measurements", "Row", "Trained",
           "budget", "eval_tasks", "known_methods"]

R = TypeVar("R")
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
PLAIN = Presentation()  # the queries alone, options ranked directly, uncalibrated
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
            change: ``benchmarks/fewshot/eval_bf16.py``), so compare rows in one precision.
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
        # A trained row's name is its run's (meta:maml, library-hub ...): checked against the evaluated rows
        # (Harness.check_reference); a baseline's is its method.
        if self.reference in BASELINES and self.reference not in self.methods:
            raise ConfigError("reference", f"{self.reference!r} is not among the evaluated methods "
                                           f"({', '.join(self.methods)})")

    def grid(self, default_steps: int) -> list[tuple[str, float, list[int]]]:
        """Fine-tuning's grid: ``(optimizer, lr, step counts)`` (one inner-loop trajectory each)."""
        steps = sorted(set(self.finetune_steps or [default_steps]))
        return [(opt, lr, steps) for opt in self.finetune_optimizers
                for lr in (self.finetune_lrs if opt == "sgd" else self.finetune_adam_lrs)]


def _accuracy(scores: Sequence[Sequence[float]], queries: Sequence[Example]) -> float:
    hits = [max(range(len(s)), key=s.__getitem__) == q.label for s, q in zip(scores, queries, strict=True)]
    return sum(hits) / len(hits)


def _calibrated(scores: Sequence[float], content_free: Sequence[Sequence[float]]) -> list[float]:
    """Log of ``p / mean(p_cf)`` per option (Zhao et al. 2021, eq. 1 with ``W = diag(p_cf)^-1``, ``b = 0``):
    ``p`` are the option probabilities renormalized over the options."""
    def probs(s: Sequence[float]) -> Tensor:
        return torch.softmax(torch.tensor(s, dtype=torch.float64), 0)

    p_cf = torch.stack([probs(s) for s in content_free]).mean(0)
    return (probs(scores).log() - p_cf.log()).tolist()


def _in_precision(method: Callable[..., R]) -> Callable[..., R]:
    """A :class:`Harness` method run under the harness's :meth:`~Harness.precision`."""
    @functools.wraps(method)
    def wrapped(self: Harness, *args: Any, **kwargs: Any) -> R:
        with self.precision():
            return method(self, *args, **kwargs)
    return wrapped


class Harness:
    """Runs the methods on shared episodes.

    Args:
        model: The (adapter-wrapped) causal LM; its own tensors are never changed.
        tokenizer: The model's tokenizer.
        base: The pretrained initialization (standard adapter init) and the inner loop whose steps
            are fine-tuning's default budget.
        config: Evaluation settings.
        trained: Trained initializations (rows ``meta``/``mtl`` ...), each enabled by its kind
            being in ``config.methods``.
        prefix_layer: The lowest decoder layer holding a fast or shared weight of any
            initialization (``ParameterSelection.lowest_adapted_layer``): layers below it are
            computed once per episode. ``None``: no reuse.
        episode_cache: Another harness's :attr:`episode_cache`, to measure on the very same episode
            objects (runs with another adapter, :func:`metalm.eval.compare.measure_separately`).
    """

    def __init__(self, model: torch.nn.Module, tokenizer, base: Init, config: EvalConfig,  # noqa: ANN001
                 trained: Sequence[Trained] = (), prefix_layer: int | None = None,
                 episode_cache: dict[tuple[str, int, int, int, int], list[TextEpisode]] | None = None) -> None:
        if not isinstance(config, EvalConfig):
            raise ConfigError("config", f"must be an EvalConfig, got {type(config).__name__}")
        for kind in config.methods:
            if kind not in BASELINES and not any(t.kind == kind for t in trained):
                raise ConfigError("methods", f"{kind} needs {trained_by(kind)}")
        self.model, self.tokenizer, self.base, self.config = model, tokenizer, base, config
        self.trained = [t for t in trained if t.kind in config.methods]
        # Never longer than the model's position table (GPT-2 style models index it directly).
        limit = getattr(model.config, "max_position_embeddings", None) or \
            getattr(model.config, "n_positions", None) or config.max_length or 2048
        self.max_length = min(config.max_length or int(limit), int(limit))
        self.collate = CollateConfig(max_length=self.max_length)
        self.layer = prefix_layer
        self.prefix_layer = prefix_layer if config.shared_work else None  # queries' frozen layers reused
        self.device = next(model.parameters()).device
        #: Drawn episodes by (task, shots, seed, salt, count): drawn once, shared with harnesses given it.
        self.episode_cache = {} if episode_cache is None else episode_cache
        self.cost = AdaptationCost(model)  # seconds and forward tokens of each adapted row, per new task

    def precision(self) -> contextlib.AbstractContextManager[Any]:
        """The context of every forward and backward pass of the evaluation: bf16 autocast on the
        model's device with ``config.autocast: bf16``, none with ``float32``."""
        if self.config.autocast == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @classmethod
    def from_learner(cls, learner: Any, tokenizer, base: Mapping[str, Tensor],  # noqa: ANN001
                     trained: Mapping[str, Tensor] | None, config: EvalConfig, kind: str | None = None) -> Harness:
        """A harness for a :class:`~metalm.algorithms.MetaLearner`'s model, from meta-parameter values
        (``meta_parameters()`` names) before and after training; its trained rows are named ``kind``
        (default: the row its algorithm declares, :attr:`MetaLearner.row`)."""
        kind = kind or type(learner).row
        check_values(learner, base, "base")
        if trained is not None:
            check_values(learner, trained, "trained")
        start = init_from_values(learner, base, trained=False)
        rows = [Trained(label, kind, init) for label, init in trained_rows(learner, trained, kind).items()] \
            if trained is not None else []
        return cls(learner.model, tokenizer, start, config, rows, learner.selection.lowest_adapted_layer())

    @classmethod
    def from_run(cls, run: Run, config: EvalConfig) -> Harness:
        """A harness for a trained :class:`~metalm.run.Run`: its base initialization (the baselines)
        and its trained values (the ``meta`` or ``mtl`` row), passed as values."""
        return cls.from_learner(run.learner, run.tokenizer, run.base, run.trained, config, kind=run.kind)

    # ------------------------------------------------------------------ episodes
    def episodes(self, task: Task, shots: int, seed: int = 0, n: int | None = None,
                 salt: int = 0) -> list[TextEpisode]:
        """The fixed evaluation episodes of ``task`` at ``shots`` for seed index ``seed``."""
        n = n or self.config.episodes
        key = (task.name, shots, seed, salt, n)
        if key not in self.episode_cache:
            value = zlib.crc32(f"{task.name}/{shots}/{self.config.seed + seed}/{salt}".encode())
            cfg = SamplerConfig(ways=self.config.ways, shots=shots, queries=self.config.queries,
                                drop_small_classes=True, content_free=list(self.config.content_free),
                                permute_verbalizers=self.config.permute_verbalizers)
            sampler = EpisodeSampler([task], cfg, seed=value)
            self.episode_cache[key] = [sampler.sample() for _ in range(n)]
        return self.episode_cache[key]

    def rows(self, finetune: FinetuneChoice | None = None) -> dict[str, Row]:
        """Every row of this evaluation by name (:func:`~metalm.eval.rows.expand_rows`), with
        fine-tuning's chosen budget when given."""
        cfg = self.config
        return {row.name: row for row in expand_rows(cfg.methods, self.base, self.trained, finetune,
                                                     in_context_trained=cfg.in_context_trained,
                                                     calibrate_trained=cfg.calibrate_trained)}

    # ------------------------------------------------------------------ scoring
    def _scores(self, params: Mapping[str, Tensor], examples: Sequence[Example],
                normalize: str = "mean") -> list[list[float]]:
        # Shared work scores many episodes per call: larger batches (the reference path keeps the configured one).
        size = max(self.config.batch_size, 32) if self.config.shared_work else self.config.batch_size
        return option_scores(self.model, params, examples, self.tokenizer, self.collate, normalize=normalize,
                             batch_size=size)

    def _generate(self, params: Mapping[str, Tensor], prompts: list[str]) -> list[str]:
        return greedy_generate(self.model, params, prompts, self.tokenizer, max_length=self.max_length,
                               max_new_tokens=self.config.max_new_tokens)

    def _support(self, episode: TextEpisode, uses: int) -> dict[str, Any]:
        """The support batch, with its frozen prefix computed when it is used twice or more (by
        several rows when work is shared, else by several inner steps)."""
        batch = {k: v.to(self.device) for k, v in collate(episode.support, self.tokenizer, self.collate).items()}
        if self.config.shared_work:  # rows grouped by length: the loss computes no padding (losses doc)
            batch = split_by_length(batch)
        if self.layer and (self.config.shared_work or uses >= 2):
            return cache_prefix(self.model, batch, self.layer)
        return prepare_batch(batch)

    def _prepared(self, ep: TextEpisode) -> tuple[list[list[float]], PreparedQueries]:
        """The queries' frozen layers under the pretrained weights, and their zero-shot scores."""
        return prepare_queries(self.model, self.base.params(), ep.query, self.tokenizer, self.collate,
                               self.prefix_layer, batch_size=max(self.config.batch_size, 32))

    def _adapt(self, init: Init, support: Mapping[str, Any], steps: Sequence[int]) -> list[dict[str, Tensor]]:
        """The fast weights after each of ``steps`` inner steps (one trajectory), as scoring params."""
        rule = UpdateRule.of(init.inner, steps=max(steps), lr=init.rate(), first_order=True)
        traj = adapt_trajectory(self.model, init.start(support), support, rule, frozen=init.frozen,
                                recompute=init.inner.recompute)
        return [init.params({k: v.detach() for k, v in traj.params[k].items()}) for k in steps]

    def _unadapted(self, method: str, episodes: Sequence[TextEpisode],
                   params: Mapping[str, Tensor] | None = None) -> list[list[list[float]]]:
        """Option scores of the unadapted row ``method`` (:data:`~metalm.eval.rows.UNADAPTED`) for every
        query of ``episodes``, with the pretrained weights or ``params``."""
        return self._presented([Row(method, UNADAPTED[method])], episodes, params)[method]

    def _presented(self, rows: Sequence[Row], episodes: Sequence[TextEpisode],
                   params: Mapping[str, Tensor] | None = None) -> dict[str, list[list[list[float]]]]:
        """Option scores of every query of ``episodes`` as each row presents them (``params``: the
        weights, the pretrained ones by default). With shared work, the rows of all of them go to one
        scoring call per normalization, each distinct row once (``icl``'s rows are the first rows of
        ``icl-cal``'s) and each episode's demonstrations encoded once for all its queries and rows;
        the reference path scores each row on each episode on its own."""
        if not self.config.shared_work:
            return {r.name: [self._presented_group([r], [ep], params)[r.name][0] for ep in episodes] for r in rows}
        return self._presented_group(rows, episodes, params)

    def _presented_group(self, rows: Sequence[Row], episodes: Sequence[TextEpisode],
                         params: Mapping[str, Tensor] | None) -> dict[str, list[list[list[float]]]]:
        params = self.base.params() if params is None else params
        out: dict[str, list[list[list[float]]]] = {}
        for channel in (False, True):
            group = [r for r in rows if r.presentation.channel == channel]
            if not group:
                continue
            rows_of = _Rows()  # one scored row per distinct (context, prompt, options)
            add, flat = rows_of.add, rows_of.flat

            plan: dict[str, list[list[list[int]]]] = {}  # row -> episode -> query -> scored rows in flat
            for row in group:
                how = row.presentation
                for ep in episodes:
                    per_query = [[add(r) for r in scored] for scored in
                                 presented(ep, demos=how.demos, channel=channel, calibrate=how.calibrate)]
                    plan.setdefault(row.name, []).append(per_query)
            scores = self._scores(params, flat, "sum" if channel else "mean")
            for row in group:
                out[row.name] = [[_combine(row.presentation, [scores[i] for i in idx]) for idx in per_query]
                                 for per_query in plan[row.name]]
        return out

    # ------------------------------------------------------------------ one block of episodes
    @_in_precision
    def block(self, rows: Sequence[Row], episodes: Sequence[TextEpisode]) -> Block:
        """Per-episode accuracy of every row on ``episodes`` (one task's block), and what each adapted
        row's adaptations cost: a function of the rows and the episodes alone."""
        if episodes[0].type == "generation":
            return self._generation_block(rows, episodes)
        cost = AdaptationCost(self.model)
        out: dict[str, list[float]] = {}
        unadapted = [r for r in rows if r.init is None]
        adapted = [r for r in rows if r.init is not None]
        # The queries' frozen layers pay off when two or more sets of weights score them (zero-shot's
        # scores come with them); a lone adapted row scores the plain way.
        plain = next((r for r in unadapted if r.presentation == PLAIN), None)
        prepare = self.prefix_layer is not None and len(adapted) + (plain is not None) >= 2 and bool(adapted)
        prepared: list[PreparedQueries | None] = [None] * len(episodes)
        if prepare:
            zeroshot = []
            for e, ep in enumerate(episodes):
                scores, prepared[e] = self._prepared(ep)
                zeroshot.append(_accuracy(scores, ep.query))
            if plain is not None:
                out[plain.name] = zeroshot
        scored = self._presented([r for r in unadapted if r.name not in out], episodes)
        for row in unadapted:
            if row.name not in out:
                out[row.name] = [_accuracy(s, ep.query) for s, ep in zip(scored[row.name], episodes, strict=True)]
        for e, ep in enumerate(episodes):
            self._adapted_rows(ep, adapted, prepared[e], out, cost)
        return Block({r.name: out[r.name] for r in rows}, cost.records)

    def _adapted_rows(self, ep: TextEpisode, rows: Sequence[Row], prep: PreparedQueries | None,
                      out: dict[str, list[float]], cost: AdaptationCost) -> None:
        """Adapt every row's initialization on ``ep``'s support set (one support prefix for all, and a
        twin's adapted weights reused, when work is shared) and append its query accuracy to
        ``out[row]`` and its adaptation's cost to ``cost``."""
        support = None
        adapted: dict[str, dict[str, Tensor]] = {}
        shared = self.config.shared_work
        for row in rows:
            init = row.init
            assert init is not None
            if row.weights not in adapted or not shared:
                if (init.adapt or init.generate) and (support is None or not shared):
                    support = self._support(ep, init.inner.steps)
                with cost.measure(row.name):  # the support batch (shared by the rows) is not counted
                    adapted[row.weights] = self._adapted(init, support)
            else:
                cost.records.setdefault(row.name, []).append(cost.records[row.weights][-1])
            with init.scoring():
                out.setdefault(row.name, []).append(self._score_episode(adapted[row.weights], ep, prep,
                                                                        row.presentation))

    @_in_precision
    def alone(self, row: Row, ep: TextEpisode) -> float:
        """``row``'s query accuracy on ``ep`` with nothing shared with another row or episode: the whole
        work of a new task (its support batch, the adaptation, the queries), as one user of one row
        would run it (:func:`~metalm.eval.episode_cost.episode_costs` measures it)."""
        init = row.init
        if init is None:
            return self._score_episode(self.base.params(), ep, None, row.presentation)
        support = self._support(ep, init.inner.steps) if init.adapt or init.generate else None
        with init.scoring():
            return self._score_episode(self._adapted(init, support), ep, None, row.presentation)

    def _adapted(self, init: Init, support: Mapping[str, Any] | None) -> dict[str, Tensor]:
        """The scoring params of ``init`` for a support batch: its inner steps (from the weights it
        generates, if it does), the generated weights, or its start as it is."""
        if init.adapt:
            return self._adapt(init, support, [init.inner.steps])[0]
        return init.params(init.start(support) if init.generate else None)

    def _generation_block(self, rows: Sequence[Row], episodes: Sequence[TextEpisode]) -> Block:
        """The task's metric (exact match or token F1) per episode; calibrated and channel rows equal their
        plain presentation (no options)."""
        cost = AdaptationCost(self.model)
        out: dict[str, list[float]] = {}
        plain: dict[bool, list[float]] = {}  # with demonstrations or not
        for demos in sorted({r.presentation.demos for r in rows if r.init is None}):
            prompts = [with_demonstrations(demonstrations(ep.support) if demos else "", q.prompt)
                       for ep in episodes for q in ep.query]
            preds = self._generate(self.base.params(), prompts)
            refs = [q.references for ep in episodes for q in ep.query]
            hits = [generation_score(episodes[0].metric, p, r) for p, r in zip(preds, refs, strict=True)]
            q = len(episodes[0].query)
            plain[demos] = [sum(hits[i * q:(i + 1) * q]) / q for i in range(len(episodes))]
        for row in rows:
            if row.init is None:
                out[row.name] = plain[row.presentation.demos]
        adapted = [r for r in rows if r.init is not None]
        for ep in episodes:
            self._adapted_rows(ep, adapted, None, out, cost)
        return Block({r.name: out[r.name] for r in rows}, cost.records)

    def _block_in_pieces(self, key: str, rows: Sequence[Row], episodes: Sequence[TextEpisode],
                         journal: Journal) -> Block:
        """:meth:`block`, measured and journaled ``journal.every`` episodes at a time; pieces already in
        the journal are read back. The whole block is journaled last (its seconds are its pieces')."""
        wanted = {r.name for r in rows}
        done = journal.pieces.get(key, {})
        accuracy: dict[str, list[float]] = {r.name: [] for r in rows}
        cost: dict[str, list[tuple[float, int]]] = {}
        for start in range(0, len(episodes), journal.every):
            if start in done and wanted <= set(done[start][0]):
                piece = recorded_block(rows, *done[start])
            else:
                began = time.perf_counter()
                piece = self.block(rows, episodes[start:start + journal.every])
                journal.put_piece(key, start, piece.accuracy, time.perf_counter() - began, cost=piece.cost)
            for name, accs in piece.accuracy.items():
                accuracy[name].extend(accs)
            for name, records in piece.cost.items():
                cost.setdefault(name, []).extend(records)
        block = Block(accuracy, cost)
        journal.put(key, block.accuracy, 0.0, cost=block.cost)
        return block

    # ------------------------------------------------------------------ fine-tuning's budget
    @_in_precision
    def choose_finetune(self, val_tasks: Sequence[Task]) -> FinetuneChoice:
        """Fine-tuning's optimizer, learning rate and steps, chosen by mean accuracy on meta-val
        episodes (first shot count; ties: the first in grid order), with the grid's accuracies. A grid
        of one point (a budget given, e.g. one chosen earlier) is that point, not measured."""
        shots = self.config.shots[0]
        grid = self.config.grid(self.base.inner.steps)
        if len(grid) == 1 and len(grid[0][2]) == 1:
            (opt, lr, (steps,)), = grid
            return FinetuneChoice(self.base.with_budget(opt, lr, steps),
                                  [{"optimizer": opt, "lr": lr, "steps": steps, "val_accuracy": None}])
        eps = [ep for task in val_tasks for ep in self.episodes(task, shots, 0, self.config.val_episodes, salt=1)]

        def one(ep: TextEpisode) -> list[float]:
            support = self._support(ep, max(grid[0][2]))
            prep = self._prepared(ep)[1] if ep.type != "generation" and self.prefix_layer is not None else None
            accs = []
            for opt, lr, steps in grid:
                start = self.base.with_budget(opt, lr, max(steps))
                for params in self._adapt(start, support, steps):
                    accs.append(self._score_episode(params, ep, prep))
            return accs

        per_episode = map_sharded(eps, one)
        points = [(opt, lr, k) for opt, lr, steps in grid for k in steps]
        means = [sum(a[i] for a in per_episode) / len(per_episode) for i in range(len(points))]
        best = max(range(len(points)), key=means.__getitem__)  # ties: the first in grid order
        opt, lr, steps = points[best]
        return FinetuneChoice(self.base.with_budget(opt, lr, steps),
                              [{"optimizer": o, "lr": r, "steps": k, "val_accuracy": m}
                               for (o, r, k), m in zip(points, means, strict=True)])

    def _score_episode(self, params: Mapping[str, Tensor], ep: TextEpisode, prep: PreparedQueries | None,
                       presentation: Presentation = PLAIN) -> float:
        """Query accuracy of ``params`` on ``ep``, its queries presented as ``presentation`` says
        (generation is always scored directly, uncalibrated)."""
        if ep.type == "generation":
            demos = demonstrations(ep.support) if presentation.demos else ""
            preds = self._generate(params, [with_demonstrations(demos, q.prompt) for q in ep.query])
            return sum(generation_score(ep.metric, p, q.references)
                       for p, q in zip(preds, ep.query, strict=True)) / len(ep.query)
        if presentation != PLAIN:
            scores = self._presented([Row("", presentation)], [ep], params)[""][0]
        elif prep is not None:
            scores = score_prepared(self.model, params, prep)
        else:
            scores = self._scores(params, ep.query)
        return _accuracy(scores, ep.query)

    # ------------------------------------------------------------------ everything
    def measure(self, tasks: Sequence[Task], progress: bool = False, journal: Journal | None = None,
                finetune: FinetuneChoice | None = None) -> Measurements:
        """Per-episode accuracy of every row on every task, shot count and seed (``finetune``: fine-tuning's
        chosen budget). Each block's adaptation costs, measured or read back from the journal, are
        added to :attr:`cost`.

        Under ``torchrun`` the blocks of episodes are dealt over the processes and gathered, so every
        process returns what one process would. With a ``journal`` (one process), blocks already in
        it are not measured again and each new block is added to it as soon as it is measured.
        """
        from tqdm.auto import tqdm

        if isinstance(tasks, (str, Task)) or not isinstance(tasks, Sequence) or not tasks or \
                not all(isinstance(t, Task) for t in tasks):
            raise ConfigError("tasks", f"must be a non-empty list of Task (metalm.data), got {tasks!r:.60}")
        ctx = current()
        journal = journal if not ctx.enabled else None
        # Seed-major: a killed run's journal holds whole seeds first.
        items = [(t, k, s) for s in range(self.config.seeds) for t in tasks for k in self.config.shots]
        bar = tqdm(total=len(items), disable=not progress or not ctx.is_main, desc="evaluate")
        rows = list(self.rows(finetune).values())
        wanted = {r.name for r in rows}

        def run(item: tuple[Task, int, int]) -> Block:
            key = Journal.key(item[0].name, item[1], item[2])
            if journal is not None and wanted <= set(journal.blocks.get(key, {})):
                block = recorded_block(rows, journal.blocks[key], journal.costs.get(key, {}))
            elif journal is not None and journal.every:
                block = self._block_in_pieces(key, rows, self.episodes(*item), journal)
            else:
                start = time.perf_counter()
                block = self.block(rows, self.episodes(*item))
                if journal is not None:
                    journal.put(key, block.accuracy, time.perf_counter() - start, cost=block.cost)
            bar.update(ctx.world_size)
            return block

        blocks = map_sharded(items, run, ctx)
        bar.close()
        out: Measurements = {}
        for (task, shots, _), block in zip(items, blocks, strict=True):
            for row, accs in block.accuracy.items():
                out.setdefault((row, task.name, shots), []).append(accs)
            for row, records in block.cost.items():
                self.cost.records.setdefault(row, []).extend(records)
        return out

    def summarize(self, data: Measurements, tasks: Sequence[Task],
                  finetune: FinetuneChoice | None = None) -> dict[str, Any]:
        """The report of ``data`` (:func:`metalm.eval.summary.summarize`) with chance, majority label,
        fine-tuning's chosen budget, each row's adaptation and each task's metric (``accuracy`` for
        option-scored tasks; a generation task's ``exact_match`` or ``token_f1``)."""
        shots = self.config.shots[0]
        eps = {t.name: [ep for s in range(self.config.seeds) for ep in self.episodes(t, shots, s)] for t in tasks}
        chance, majority = query_baselines(eps)
        report = summarize(data, [t.name for t in tasks], self.config.shots, chance=chance, majority=majority,
                           seeds=[self.config.seed + s for s in range(self.config.seeds)], baselines=BASELINES,
                           reference=self.config.reference)
        report["budgets"] = {name: budget(row.init, row.presentation) for name, row in self.rows(finetune).items()
                             if row.init}
        report["adaptation_cost"] = self.cost.summary()
        if finetune is not None:
            report["finetune"] = finetune.record()
        report["finetune_lr"] = finetune.init.inner.lr if finetune else None
        report["finetune_steps"] = finetune.init.inner.steps if finetune else None
        report["inner_steps"] = self.base.inner.steps
        report["metrics"] = {t.name: t.spec.metric for t in tasks}  # what a task's "accuracy" is
        report["max_length"] = self.max_length
        report["truncated"] = truncation(self, tasks, finetune)  # rows cut to max_length, per row and task
        return report

    def run(self, tasks: Sequence[Task], progress: bool = False,
            finetune: FinetuneChoice | None = None) -> dict[str, Any]:
        """Measure every method on ``tasks`` and return the report (with the inner-steps sweep when
        ``config.inner_steps`` is set)."""
        report = self.summarize(self.measure(tasks, progress, finetune=finetune), tasks, finetune)
        if self.config.inner_steps:
            report["inner_steps_sweep"] = self.inner_steps_sweep(tasks, finetune)
        return report

    @_in_precision
    def inner_steps_sweep(self, tasks: Sequence[Task], finetune: FinetuneChoice | None = None) -> list[dict[str, Any]]:
        """Macro accuracy of ``finetune`` and the trained rows at each of ``config.inner_steps``
        (first shot count, first seed), one inner-loop trajectory per episode."""
        from .stats import mean_ci95

        shots, steps = self.config.shots[0], sorted(self.config.inner_steps or [])
        rows = [r for r in self.rows(finetune).values() if r.init is not None and r.own_budget and r.init.adapt]
        items = [(t, ep) for t in tasks for ep in self.episodes(t, shots)]

        def one(item: tuple[Task, TextEpisode]) -> dict[str, list[float]]:
            ep = item[1]
            support = self._support(ep, max(steps))
            prep = self._prepared(ep)[1] if ep.type != "generation" and self.prefix_layer is not None else None
            trajectories: dict[str, list[dict[str, Tensor]]] = {}  # shared with a twin
            out = {}
            for row in rows:
                if row.weights not in trajectories:
                    trajectories[row.weights] = self._adapt(row.init, support, steps)
                out[row.name] = [self._score_episode(p, ep, prep, row.presentation) for p in trajectories[row.weights]]
            return out

        got = map_sharded(items, one)
        n = self.config.episodes
        out = []
        for row in rows:
            for j, k in enumerate(steps):
                # One unit per episode index: the mean over tasks (items are task-major).
                units = [sum(got[t * n + e][row.name][j] for t in range(len(tasks))) / len(tasks) for e in range(n)]
                mean, ci = mean_ci95(units)
                out.append({"method": row.name, "shots": shots, "inner_steps": k, "accuracy": mean, "ci95": ci})
        return out


@dataclasses.dataclass
class Block:
    """One block of episodes measured: per-episode accuracy of each row, and each adapted row's
    adaptations as ``(seconds, forward tokens)`` (:class:`~metalm.eval.cost.AdaptationCost`)."""

    accuracy: dict[str, list[float]]
    cost: dict[str, list[tuple[float, int]]]


def recorded_block(rows: Sequence[Row], accuracy: Mapping[str, list[float]],
                   costs: Mapping[str, list[list[float]]]) -> Block:
    """A block (or piece) read back from a journal, in the rows' order, as a measured one."""
    return Block({r.name: accuracy[r.name] for r in rows},
                 {r.name: [tuple(c) for c in costs[r.name]] for r in rows if r.name in costs})


def _combine(presentation: Presentation, scores: Sequence[Sequence[float]]) -> list[float]:
    """One query's option scores from its scored rows: channel rows hold one option each; a
    calibrated query's first row is the query, the rest its content-free prompts."""
    if presentation.channel:
        return [s[0] for s in scores]
    if presentation.calibrate:
        if len(scores) < 2:
            raise TaskError("content_free", "calibration needs content-free prompts; the sampler made none")
        return _calibrated(scores[0], scores[1:])
    return list(scores[0])


class _Rows:
    """Distinct rows to score: :meth:`add` returns a row's index in :attr:`flat`, adding it once."""

    def __init__(self) -> None:
        self.flat: list[Example] = []
        self.where: dict[tuple[Any, ...], int] = {}

    def add(self, ex: Example) -> int:
        key = (ex.context, ex.prompt, tuple(ex.options))
        if key not in self.where:
            self.where[key] = len(self.flat)
            self.flat.append(ex)
        return self.where[key]


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


def eval_tasks(registry: TaskRegistry, names: list[str]) -> list[Task]:
    """Tasks to evaluate; language-modeling tasks have no accuracy and are refused."""
    tasks = [registry[n] for n in names]
    lm = [t.name for t in tasks if t.spec.type == "language_modeling"]
    if lm:
        raise TaskError("tasks", f"{lm[0]!r} is a language-modeling task: few-shot accuracy does not apply")
    return tasks

