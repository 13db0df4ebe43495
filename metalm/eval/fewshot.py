"""Few-shot evaluation on held-out tasks: every method on the same episodes (paired comparisons).

For each task, shot count and evaluation seed, ``episodes`` episodes are drawn from a seed fixed by
the task name, the shot count and the seed, so every method sees exactly the same support and
query examples. The methods (rows): :mod:`metalm.eval.settings`. :class:`Harness` measures blocks of
episodes; choosing fine-tuning's budget and sweeping inner steps: :mod:`metalm.eval.budgets`. Rank
classification for options, exact match for generation (no calibration or channel there);
:mod:`metalm.eval.summary` turns per-episode accuracies into means, intervals and paired differences.

Work shared by the methods is done once (``shared_work``): the support set's frozen layers and
the queries' frozen layers once per episode (:mod:`metalm.eval.prepared`), the unadapted methods'
queries of all of a block's episodes in the same forward passes, and one inner-loop trajectory per
fine-tuning optimizer and rate for every step count of the grid.
"""

from __future__ import annotations

import contextlib
import functools
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor

from ..data import CollateConfig, EpisodeSampler, SamplerConfig, Task, collate
from ..data.demos import demonstrations, with_demonstrations
from ..data.episode import Example, TextEpisode
from ..errors import ConfigError
from ..inner import UpdateRule, adapt_trajectory
from ..losses import cache_prefix, prepare_batch, split_by_length
from ..runtime.distributed import current, map_sharded
from ..runtime.environment import warn_if_emulated_bf16
from .blocks import Block, journaled_block
from .budgets import inner_steps_sweep
from .cost import AdaptationCost
from .inits import Init, check_values, init_from_values, trained_rows
from .journal import Journal
from .prepared import PreparedQueries, prepare_queries, score_prepared
from .presented import accuracy, presented_scores
from .rows import UNADAPTED, FinetuneChoice, Presentation, Row, Trained, budget, expand_rows
from .scoring import generation_score, greedy_generate, option_scores
from .settings import BASELINES, CONTENT_FREE, DEFAULT_METHODS, EvalConfig, eval_tasks, known_methods, trained_by
from .summary import Measurements, query_baselines, summarize
from .truncation import truncation

if TYPE_CHECKING:
    from ..run import Run

__all__ = ["BASELINES", "CONTENT_FREE", "DEFAULT_METHODS", "Block", "EvalConfig", "FinetuneChoice", "Harness",
           "Measurements", "Row", "Trained", "budget", "eval_tasks", "known_methods"]

R = TypeVar("R")
PLAIN = Presentation()  # the queries alone, options ranked directly, uncalibrated


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
        if config.autocast == "bf16":
            warn_if_emulated_bf16(self.device.type, "evaluation")
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

    def rows(self, finetune: FinetuneChoice | None = None, any_budget: bool = False, every: bool = False
             ) -> dict[str, Row]:
        """The rows of this evaluation by name (:func:`~metalm.eval.rows.expand_rows`; those of
        ``config.rows`` alone unless ``every``), with fine-tuning's chosen budget when given
        (``any_budget``: before the choice, with the ``@ft`` rows a chosen budget may add: the names a
        reference and ``config.rows`` are checked against)."""
        cfg = self.config
        rows = {row.name: row for row in expand_rows(cfg.methods, self.base, self.trained, finetune,
                                                     in_context_trained=cfg.in_context_trained,
                                                     calibrate_trained=cfg.calibrate_trained, any_budget=any_budget)}
        return rows if every or cfg.rows is None else {n: r for n, r in rows.items() if n in cfg.rows}

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

    def support(self, episode: TextEpisode, uses: int) -> dict[str, Any]:
        """The support batch, with its frozen prefix computed when it is used twice or more (by
        several rows when work is shared, else by several inner steps)."""
        batch = {k: v.to(self.device) for k, v in collate(episode.support, self.tokenizer, self.collate).items()}
        if self.config.shared_work:  # rows grouped by length: the loss computes no padding (losses doc)
            batch = split_by_length(batch)
        if self.layer and (self.config.shared_work or uses >= 2):
            return cache_prefix(self.model, batch, self.layer)
        return prepare_batch(batch)

    def prepared_queries(self, ep: TextEpisode) -> tuple[list[list[float]], PreparedQueries]:
        """The queries' frozen layers under the pretrained weights, and their zero-shot scores."""
        return prepare_queries(self.model, self.base.params(), ep.query, self.tokenizer, self.collate,
                               self.prefix_layer, batch_size=max(self.config.batch_size, 32))

    def adapt(self, init: Init, support: Mapping[str, Any], steps: Sequence[int]) -> list[dict[str, Tensor]]:
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
        params = self.base.params() if params is None else params
        if not self.config.shared_work:
            return {r.name: [presented_scores(self._scores, params, [r], [ep])[r.name][0] for ep in episodes]
                    for r in rows}
        return presented_scores(self._scores, params, rows, episodes)


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
                scores, prepared[e] = self.prepared_queries(ep)
                zeroshot.append(accuracy(scores, ep.query))
            if plain is not None:
                out[plain.name] = zeroshot
        scored = self._presented([r for r in unadapted if r.name not in out], episodes)
        for row in unadapted:
            if row.name not in out:
                out[row.name] = [accuracy(s, ep.query) for s, ep in zip(scored[row.name], episodes, strict=True)]
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
                    support = self.support(ep, init.inner.steps)
                with cost.measure(row.name):  # the support batch (shared by the rows) is not counted
                    adapted[row.weights] = self._adapted(init, support)
            else:
                cost.records.setdefault(row.name, []).append(cost.records[row.weights][-1])
            with init.scoring():
                out.setdefault(row.name, []).append(self.score_episode(adapted[row.weights], ep, prep,
                                                                        row.presentation))

    @_in_precision
    def alone(self, row: Row, ep: TextEpisode) -> float:
        """``row``'s query accuracy on ``ep`` with nothing shared with another row or episode: the whole
        work of a new task (its support batch, the adaptation, the queries), as one user of one row
        would run it (:func:`~metalm.eval.episode_cost.episode_costs` measures it)."""
        init = row.init
        if init is None:
            return self.score_episode(self.base.params(), ep, None, row.presentation)
        support = self.support(ep, init.inner.steps) if init.adapt or init.generate else None
        with init.scoring():
            return self.score_episode(self._adapted(init, support), ep, None, row.presentation)

    def _adapted(self, init: Init, support: Mapping[str, Any] | None) -> dict[str, Tensor]:
        """The scoring params of ``init`` for a support batch: its inner steps (from the weights it
        generates, if it does), the generated weights, or its start as it is."""
        if init.adapt:
            return self.adapt(init, support, [init.inner.steps])[0]
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

    def score_episode(self, params: Mapping[str, Tensor], ep: TextEpisode, prep: PreparedQueries | None,
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
        return accuracy(scores, ep.query)

    # ------------------------------------------------------------------ everything
    def blocks(self, tasks: Sequence[Task]) -> list[tuple[Task, int, int]]:
        """The blocks of episodes :meth:`measure` measures, ``(task, shots, seed)``, seed-major (a killed run's
        journal holds whole seeds first); :meth:`Journal.key` names each."""
        return [(t, k, s) for s in range(self.config.seeds) for t in tasks for k in self.config.shots]

    def measure(self, tasks: Sequence[Task], progress: bool = False, journal: Journal | None = None,
                finetune: FinetuneChoice | None = None, shard: tuple[int, int] | None = None) -> Measurements:
        """Per-episode accuracy of every row on every task, shot count and seed (``finetune``: fine-tuning's
        chosen budget). Each block's adaptation costs, measured or read back from the journal, are
        added to :attr:`cost`.

        Under ``torchrun`` the blocks of episodes are dealt over the processes and gathered, so every
        process returns what one process would. With a ``journal`` (one process), blocks already in
        it are not measured again and each new block is added to it as soon as it is measured. With
        ``shard`` ``(I, N)`` (and a journal) only every ``N``-th block from the ``I``-th is measured,
        the others read back when journaled (by another process) and else left out of the result.
        """
        from tqdm.auto import tqdm

        if isinstance(tasks, (str, Task)) or not isinstance(tasks, Sequence) or not tasks or \
                not all(isinstance(t, Task) for t in tasks):
            raise ConfigError("tasks", f"must be a non-empty list of Task (metalm.data), got {tasks!r:.60}")
        ctx = current()
        journal = journal if not ctx.enabled else None
        if shard is not None and journal is None:
            raise ConfigError("shard", "a shard of an evaluation needs a journal (an output path) and one process")
        items = self.blocks(tasks)
        rows = list(self.rows(finetune).values())
        if shard is not None:
            items = [it for i, it in enumerate(items) if i % shard[1] == shard[0]
                     or not journal.missing([Journal.key(it[0].name, it[1], it[2])], [r.name for r in rows])]
        bar = tqdm(total=len(items), disable=not progress or not ctx.is_main, desc="evaluate")

        def run(item: tuple[Task, int, int]) -> Block:
            block = journaled_block(self.block, Journal.key(item[0].name, item[1], item[2]), rows,
                                    lambda: self.episodes(*item), journal)
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
            report["inner_steps_sweep"] = inner_steps_sweep(self, tasks, finetune)
        return report
