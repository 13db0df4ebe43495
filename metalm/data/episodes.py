"""The episodic sampler: tasks drawn from a pool, N-way K-shot episodes drawn from a task.

Classification episodes take ``min(ways, classes)`` of the task's classes and ``shots`` support
plus ``queries`` query examples of each, disjoint; episode label ``i`` is the ``i``-th drawn class
(the labels are remapped per episode), and the verbalizers can be permuted among the episode's
classes so that the answer must be learned from the support set. Multiple-choice, generation and
language-modeling episodes take ``shots`` support and ``queries`` query examples.

Sampling is deterministic: a seed (and a rank, for distributed runs) fixes every episode in any
process, and :meth:`EpisodeSampler.state_dict` captures the stream for exact resumption.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError, TaskError
from .episode import Example, TextEpisode
from .registry import Split, Task, TaskRegistry


@dataclasses.dataclass
class SamplerConfig:
    """How episodes are drawn.

    Attributes:
        ways: Classes per classification episode (N); tasks with fewer use all of theirs.
        shots: Support examples per class (classification) or per episode (other types) (K).
        queries: Query examples per class (classification) or per episode (other types) (Q).
        task_sampling: ``uniform`` over tasks, ``proportional`` to their size, or ``temperature``
            (probability proportional to ``size ** (1 / temperature)``).
        temperature: The temperature of ``temperature`` sampling.
        permute_verbalizers: Shuffle the verbalized answers among an episode's classes.
        drop_small_classes: Leave out classes with fewer than ``shots + queries`` examples
            instead of raising.
        drop_small_tasks: Leave out of the pool a task that cannot supply an episode of this shape
            (after ``drop_small_classes``), with one warning line naming it and the most shots it
            supports, instead of raising (meta-training on a whole pool at a large shot count).
        content_free: Also render each classification and multiple-choice prompt with its input
            fields (every text field but the answer's) replaced by each of these strings, into
            ``Example.content_free`` (contextual calibration, e.g. ``["N/A", "", "[MASK]"]``).
    """

    ways: int = 5
    shots: int = 4
    queries: int = 4
    task_sampling: Literal["uniform", "proportional", "temperature"] = "uniform"
    temperature: float = 2.0
    permute_verbalizers: bool = False
    drop_small_classes: bool = False
    drop_small_tasks: bool = False
    content_free: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        for key in ("ways", "shots", "queries"):
            if getattr(self, key) < 1:
                raise ConfigError(f"sampler.{key}", f"must be >= 1, got {getattr(self, key)}")
        if self.ways < 2:
            raise ConfigError("sampler.ways", "must be >= 2")
        if self.temperature <= 0:
            raise ConfigError("sampler.temperature", f"must be > 0, got {self.temperature}")


class _TaskIndex:
    """Row indices of a task, by class for classification, computed once."""

    def __init__(self, task: Task, cfg: SamplerConfig) -> None:
        self.task, self.spec = task, task.spec
        need = cfg.shots + cfg.queries
        data = task.data
        self.size = len(data)
        self.by_class: list[tuple[str, np.ndarray]] = []
        if self.spec.type == "classification":
            labels = np.asarray(data["label"], dtype=object)
            for lab in self.spec.labels or []:
                rows = np.flatnonzero(labels == lab)
                if len(rows) >= need:
                    self.by_class.append((lab, rows))
                elif len(rows) and not cfg.drop_small_classes:
                    raise TaskError("sampler", _too_few(task, cfg, len(rows), f"class {lab!r} has") +
                                    " (set drop_small_classes to skip such classes)", task.path)
            if len(self.by_class) < 2:
                counts = sorted((int((labels == lab).sum()) for lab in self.spec.labels or []), reverse=True)
                second = counts[1] if len(counts) > 1 else 0
                raise TaskError("sampler", f"task {task.name!r} has fewer than 2 classes with {need} examples "
                                f"({_most(second, cfg)} with {cfg.queries} queries); asked for {cfg.shots}",
                                task.path)
        elif self.size < need:
            raise TaskError("sampler", _too_few(task, cfg, self.size, "it has"), task.path)


def _too_few(task: Task, cfg: SamplerConfig, have: int, what: str) -> str:
    """One line: the most shots ``task`` supports with ``cfg.queries`` queries, and what was asked."""
    recorded = f"; its file records max_shots: {task.spec.max_shots}" if task.spec.max_shots else ""
    return (f"task {task.name!r} supports {_most(have, cfg)} with {cfg.queries} queries ({what} {have} examples"
            f"{recorded}); asked for {cfg.shots}")


def _most(have: int, cfg: SamplerConfig) -> str:
    """``at most K shots`` (or ``no shot``) for a class or task of ``have`` examples."""
    return f"at most {have - cfg.queries} shots" if have > cfg.queries else "no shot"


class EpisodeSampler:
    """Draws :class:`TextEpisode` s from a pool of tasks.

    Args:
        tasks: The task pool (e.g. a split's meta-train tasks).
        config: Episode shape and task sampling.
        seed: Seed of the stream.
        rank: This process's rank; each rank gets an independent stream of the same seed.
        world_size: Number of ranks.

    Attributes:
        dropped: Tasks left out of the pool because they cannot supply this shape
            (``drop_small_tasks``), with the reason.

    Raises:
        TaskError: If a task cannot supply episodes of this shape (and ``drop_small_tasks`` is
            off, or no task of the pool can).
    """

    def __init__(self, tasks: Sequence[Task], config: SamplerConfig | None = None, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if not tasks:
            raise ConfigError("tasks", "the sampler needs at least one task")
        if not 0 <= rank < world_size:
            raise ConfigError("rank", f"must be in 0..{world_size - 1}, got {rank}")
        self.config = config or SamplerConfig()
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.index: list[_TaskIndex] = []
        self.dropped: dict[str, str] = {}
        for task in tasks:
            try:
                self.index.append(_TaskIndex(task, self.config))
            except TaskError as err:
                if not self.config.drop_small_tasks:
                    raise
                self.dropped[task.name] = err.message
                warnings.warn(f"sampler.drop_small_tasks: {task.name} left out of the pool: {err.message}",
                              stacklevel=2)
        if not self.index:
            raise TaskError("sampler", f"no task of the pool of {len(tasks)} can supply {self.config.ways}-way "
                                       f"{self.config.shots}-shot episodes with {self.config.queries} queries")
        sizes = np.array([ix.size for ix in self.index], dtype=float)
        mode = self.config.task_sampling
        weights = np.ones_like(sizes) if mode == "uniform" else sizes if mode == "proportional" else \
            sizes ** (1.0 / self.config.temperature)
        self.task_probs = weights / weights.sum()
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(rank,))))
        self.drawn = 0

    def fork(self, rank: int) -> EpisodeSampler:
        """The stream of ``rank`` (same seed, pool and world size) sharing this sampler's task index,
        so many streams do not index every task's labels again; it starts at its beginning."""
        if not 0 <= rank < self.world_size:
            raise ConfigError("rank", f"must be in 0..{self.world_size - 1}, got {rank}")
        other = copy.copy(self)
        other.rank, other.drawn = rank, 0
        other._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=(rank,))))
        return other

    @property
    def tasks(self) -> list[str]:
        """Names of the tasks in the pool, in order."""
        return [ix.task.name for ix in self.index]

    def sample(self, task: str | None = None) -> TextEpisode:
        """Draw the next episode (from ``task`` if given, else from a sampled task)."""
        rng = self._rng
        if task is None:
            ix = self.index[int(rng.choice(len(self.index), p=self.task_probs))]
        else:
            matches = [i for i in self.index if i.task.name == task]
            if not matches:
                raise ConfigError("task", f"{task!r} is not in this sampler's pool")
            ix = matches[0]
        self.drawn += 1
        cfg = self.config
        if ix.spec.type == "classification":
            return self._classification(ix, rng)
        rows = rng.choice(ix.size, cfg.shots + cfg.queries, replace=False)
        examples = self._render(ix, rows.tolist(), None, None)
        return TextEpisode(ix.task.name, ix.spec.type, examples[:cfg.shots], examples[cfg.shots:],
                           metric=ix.spec.metric)

    def _classification(self, ix: _TaskIndex, rng: np.random.Generator) -> TextEpisode:
        cfg = self.config
        ways = min(cfg.ways, len(ix.by_class))
        chosen = sorted(rng.choice(len(ix.by_class), ways, replace=False).tolist())
        order = rng.permutation(ways)
        classes = [ix.by_class[chosen[i]][0] for i in order]
        pools = [ix.by_class[chosen[i]][1] for i in order]
        spec = ix.spec
        verbal = [spec.verbalize(c) for c in classes]
        if cfg.permute_verbalizers:
            verbal = [verbal[j] for j in rng.permutation(ways)]
        options = [spec.target_prefix + v for v in verbal]
        support_rows, support_lab, query_rows, query_lab = [], [], [], []
        for label, pool in enumerate(pools):
            picked = rng.choice(pool, cfg.shots + cfg.queries, replace=False).tolist()
            support_rows += picked[:cfg.shots]
            support_lab += [label] * cfg.shots
            query_rows += picked[cfg.shots:]
            query_lab += [label] * cfg.queries
        s_perm, q_perm = rng.permutation(len(support_rows)), rng.permutation(len(query_rows))
        support = self._render(ix, [support_rows[i] for i in s_perm], [support_lab[i] for i in s_perm], options)
        query = self._render(ix, [query_rows[i] for i in q_perm], [query_lab[i] for i in q_perm], options)
        return TextEpisode(ix.task.name, spec.type, support, query, classes, spec.metric)

    def _render(self, ix: _TaskIndex, rows: list[int], labels: list[int] | None,
                options: list[str] | None) -> list[Example]:
        spec, batch = ix.spec, ix.task.data[rows]
        keys = list(batch)
        out = []
        for j in range(len(rows)):
            row: dict[str, Any] = {k: batch[k][j] for k in keys}
            if spec.type == "classification":
                assert labels is not None and options is not None
                row["options"] = [o.strip() for o in options]
                out.append(Example(spec.prompt(row, ix.task.path), options[labels[j]], list(options), labels[j],
                                   content_free=self._content_free(ix, row)))
            elif spec.type == "multiple_choice":
                opts = [spec.target_prefix + o for o in row["options"]]
                out.append(Example(spec.prompt(row, ix.task.path), opts[row["label"]], opts, int(row["label"]),
                                   content_free=self._content_free(ix, row)))
            elif spec.type == "generation":
                out.append(Example(spec.prompt(row, ix.task.path), spec.target_prefix + row["target"],
                                   references=list(row["references"])))
            else:
                out.append(Example("", row["text"]))
        return out

    def _content_free(self, ix: _TaskIndex, row: dict[str, Any]) -> tuple[str, ...]:
        """The prompt with every text field but the answer's replaced by each content-free input (Zhao et
        al. 2021): the answer fields are the task's own (``target_field``, ``options_field``) and the
        canonical columns loading made of them, whatever the input fields are named (``text`` too)."""
        answer_fields = {"label", "options", "target", "references", ix.spec.target_field, ix.spec.options_field}
        return tuple(ix.spec.prompt({k: (cf if isinstance(v, str) and k not in answer_fields else v)
                                     for k, v in row.items()}, ix.task.path)
                     for cf in self.config.content_free)

    def __iter__(self) -> Iterator[TextEpisode]:
        while True:
            yield self.sample()

    def state_dict(self) -> dict[str, Any]:
        """The stream's position (JSON-serializable): restoring it continues with the same episodes."""
        return {"seed": self.seed, "rank": self.rank, "drawn": self.drawn, "tasks": self.tasks,
                "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; the pool and seed must match."""
        if state.get("tasks") != self.tasks or state.get("seed") != self.seed or state.get("rank") != self.rank:
            raise ConfigError("sampler", "the saved sampler state is for another task pool, seed or rank")
        self._rng.bit_generator.state = state["rng"]
        self.drawn = int(state["drawn"])


def split_sampler(split: Split, role: Literal["meta_train", "meta_val", "meta_test"], registry: TaskRegistry,
                  config: SamplerConfig | None = None, **kwargs: Any) -> EpisodeSampler:
    """A sampler over one list of a split; only that list's tasks are loaded.

    Training code builds its sampler with ``role="meta_train"``, so held-out tasks are never read.
    ``kwargs`` go to :class:`EpisodeSampler` (``seed``, ``rank``, ``world_size``).
    """
    if role not in ("meta_train", "meta_val", "meta_test"):
        raise ConfigError("role", f"{role!r} is not one of meta_train, meta_val, meta_test")
    return EpisodeSampler([registry[name] for name in getattr(split, role)], config, **kwargs)
