"""The task registry (task definitions indexed by name) and named meta-train/val/test splits.

The shipped definitions live in the top-level ``tasks/`` folder (inside the wheel as
``metalm/_tasks``); :func:`default_registry` indexes them. Task data is read lazily, on first use.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import datasets

from ..config import from_dict, read_yaml
from ..errors import ConfigError, TaskError
from .sources import load_examples
from .tasks import TaskSpec, load_task_file


def packaged_tasks_dir() -> Path:
    """The shipped ``tasks/`` folder (wheel: ``metalm/_tasks``; source checkout: ``<repo>/tasks``)."""
    pkg = Path(__file__).resolve().parent.parent
    for candidate in (pkg / "_tasks", pkg.parent / "tasks"):
        if candidate.is_dir():
            return candidate
    raise TaskError("<tasks>", f"no shipped task folder next to {pkg}")


class Task:
    """A task definition with its examples (loaded on first access).

    Attributes:
        spec: The validated definition.
        path: The YAML file it came from (or ``None``).
    """

    def __init__(self, spec: TaskSpec, path: str | None = None) -> None:
        self.spec, self.path = spec, path
        self._data: datasets.Dataset | None = None
        self.header: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def data(self) -> datasets.Dataset:
        """The normalized examples (see :mod:`metalm.data.sources`)."""
        if self._data is None:
            with _quiet_datasets():
                self._data, self.header = load_examples(self.spec, self.path)
        return self._data

    @property
    def loaded(self) -> bool:
        """Whether the examples have been read."""
        return self._data is not None

    def subset(self, indices: Sequence[int], name: str) -> Task:
        """A task named ``name`` holding the examples of ``indices`` (of :attr:`data`), with this task's
        spec otherwise (no ``max_shots``: a part is for measuring, not for the benchmark's caps)."""
        part = Task(dataclasses.replace(self.spec, name=name, max_shots=None), self.path)
        part._data, part.header = self.data.select(list(indices)), self.header
        return part

    def __len__(self) -> int:
        return len(self.data)

    def class_counts(self) -> dict[str, int]:
        """Examples per label (classification), in the order of ``spec.labels``; empty otherwise."""
        if self.spec.type != "classification":
            return {}
        counts = Counter(self.data["label"])
        return {lab: counts.get(lab, 0) for lab in self.spec.labels or []}

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {self.spec.type}, {self.path})"


class _quiet_datasets:
    def __enter__(self) -> None:
        self.was = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()

    def __exit__(self, *exc: object) -> None:
        if self.was:
            datasets.enable_progress_bars()


class TaskRegistry:
    """Task definitions indexed by name; duplicate names are an error naming both files."""

    def __init__(self, tasks: Iterable[Task] = ()) -> None:
        self._tasks: dict[str, Task] = {}
        self.dirs: list[Path] = []  # the folders indexed (their splits/ sub-folders hold named splits)
        for task in tasks:
            self.add(task)

    @classmethod
    def from_dirs(cls, *dirs: str | Path) -> TaskRegistry:
        """Index every ``*.yaml`` under ``dirs`` (``splits`` and ``protocols`` sub-folders hold splits and
        evaluation protocols, not tasks)."""
        registry = cls()
        for root in dict.fromkeys(Path(d).expanduser().resolve() for d in dirs):
            if not root.is_dir():
                raise TaskError("<tasks>", f"no such folder: {root}")
            registry.dirs.append(root)
            for path in sorted(root.rglob("*.yaml")):
                if {"splits", "protocols"} & set(path.relative_to(root).parts):
                    continue
                registry.add(Task(load_task_file(path), str(path)))
        return registry

    def add(self, task: Task) -> None:
        """Register a task; a duplicate name raises :class:`TaskError`."""
        if task.name in self._tasks:
            raise TaskError("name", f"duplicate task name {task.name!r} (also in {self._tasks[task.name].path})",
                            task.path)
        self._tasks[task.name] = task

    def __getitem__(self, name: str) -> Task:
        if name not in self._tasks:
            close = [n for n in self._tasks if name in n or n in name][:3]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise TaskError("tasks", f"unknown task {name!r}{hint}")
        return self._tasks[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self):  # noqa: ANN204 - iterator of Task
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def names(self) -> list[str]:
        """Sorted task names."""
        return sorted(self._tasks)

    def loaded(self) -> set[str]:
        """Names of the tasks whose data has been read (what a code path has touched)."""
        return {n for n, t in self._tasks.items() if t.loaded}


def task_path() -> list[str]:
    """The task folders named by ``$METALM_TASK_PATH`` (separated by ``os.pathsep``, like ``PATH``)."""
    return [d for d in os.environ.get("METALM_TASK_PATH", "").split(os.pathsep) if d.strip()]


def default_registry(*dirs: str | Path) -> TaskRegistry:
    """The shipped tasks, those in ``$METALM_TASK_PATH`` and in ``dirs`` (cached per folder list and
    environment; task data loads lazily). ``default_registry.cache_clear()`` forgets them."""
    return _cached_registry(os.environ.get("METALM_TASK_PATH", ""), tuple(str(d) for d in dirs))


@lru_cache(maxsize=4)
def _cached_registry(env: str, dirs: tuple[str, ...]) -> TaskRegistry:
    return TaskRegistry.from_dirs(packaged_tasks_dir(), *task_path(), *dirs)


default_registry.cache_clear = _cached_registry.cache_clear  # type: ignore[attr-defined]


@dataclasses.dataclass
class Split:
    """A named partition of tasks into meta-train, meta-validation and meta-test lists.

    Attributes:
        name: The split's name.
        meta_train: Tasks to meta-train (and multi-task train) on.
        meta_val: Tasks for model selection (inner-loop budget, early stopping).
        meta_test: Held-out tasks, touched only by evaluation.
        description: What the split is for.
    """

    name: str
    meta_train: list[str]
    meta_val: list[str]
    meta_test: list[str]
    description: str = ""

    def check(self, registry: TaskRegistry | None = None, source: str | None = None) -> Split:
        """Raise :class:`TaskError` unless the lists are non-empty, duplicate-free, disjoint and known."""
        lists = {"meta_train": self.meta_train, "meta_val": self.meta_val, "meta_test": self.meta_test}
        for key, names in lists.items():
            if not names:
                raise TaskError(key, "is empty", source)
            dup = [n for n, c in Counter(names).items() if c > 1]
            if dup:
                raise TaskError(key, f"lists {dup[0]!r} twice", source)
            if registry is not None:
                unknown = [n for n in names if n not in registry]
                if unknown:
                    raise TaskError(key, f"unknown task {unknown[0]!r}", source)
        keys = list(lists)
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                both = sorted(set(lists[a]) & set(lists[b]))
                if both:
                    raise TaskError(b, f"{both[0]!r} is also in {a}", source)
        return self


def load_split(name_or_path: str | Path, registry: TaskRegistry | None = None) -> Split:
    """Load a split by name or path, validated against ``registry``.

    A name is looked up as ``splits/NAME.yaml`` in the registry's task folders, the user's last
    first, then in the shipped ``tasks/splits``.
    """
    registry = registry if registry is not None else default_registry()
    path = Path(name_or_path)
    if not path.suffix:
        folders = [*(d / "splits" for d in reversed(registry.dirs)), packaged_tasks_dir() / "splits"]
        found = [f / f"{name_or_path}.yaml" for f in folders if (f / f"{name_or_path}.yaml").is_file()]
        if not found:
            known = sorted({p.stem for f in folders for p in f.glob("*.yaml")})
            raise TaskError("split", f"unknown split {str(name_or_path)!r} (known: {', '.join(known)})")
        path = found[0]
    data = read_yaml(path, TaskError, "split")
    try:
        split = from_dict(Split, data, source=str(path))
    except ConfigError as err:
        raise TaskError(err.field, err.message, str(path)) from None
    return split.check(registry, str(path))
