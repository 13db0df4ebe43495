"""Evaluation protocols as data: the split, the tasks and the :class:`EvalConfig` values of a benchmark.

A protocol is one flat YAML file::

    description: The method study (benchmarks/RESULTS.md), 4-shot 3-way episodes, 10 x 3 seeds.
    split: default          # whose tasks are evaluated (default: the run's split)
    evaluate_on: meta_test  # which of its lists: meta_test (held-out) or meta_val
    shots: [4]              # ... and any EvalConfig field (``metalm config-schema --eval``)
    episodes: 10
    seeds: 3

``metalm eval --protocol NAME|FILE.yaml`` reads it; a name is looked up as ``protocols/NAME.yaml`` in
the task folders (``--task-dir``, ``$METALM_TASK_PATH``: the user's last first), then in the shipped
``tasks/protocols``. Values given on the command line override the protocol's (:func:`merge`); the
report records the protocol and the values it ran with (``report["protocol"]``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config import ConfigError, from_dict, read_yaml, to_dict
from ..data.registry import TaskRegistry, packaged_tasks_dir
from .settings import EvalConfig

LISTS = ("meta_test", "meta_val")


@dataclasses.dataclass
class Protocol:
    """A validated protocol.

    Attributes:
        name: The file's stem (``main``, ``study``, ...).
        path: The file it was read from.
        description: Free text: what the protocol measures.
        split: Split whose tasks are evaluated (``None``: the run's).
        evaluate_on: Which list of the split: ``meta_test`` or ``meta_val`` (not ``on``: YAML 1.1
            reads that key as ``True``).
        tasks: Task names instead of the split's list.
        eval: :class:`EvalConfig` fields the protocol sets (the rest keep their defaults).
    """

    name: str
    path: str
    description: str = ""
    split: str | None = None
    evaluate_on: str = "meta_test"
    tasks: list[str] | None = None
    eval: dict[str, Any] = dataclasses.field(default_factory=dict)

    def record(self, eval_config: EvalConfig, split: str, tasks: list[str]) -> dict[str, Any]:
        """What the report stores: the protocol's name, file and the values the evaluation ran with."""
        values = {"split": split, "evaluate_on": self.evaluate_on, "tasks": tasks, **to_dict(eval_config)}
        return {"name": self.name, "path": self.path, "description": self.description, "values": values}


_OWN = ("description", "split", "evaluate_on", "tasks")


def protocol_folders(registry: TaskRegistry) -> list[Path]:
    """Where protocol names are looked up, first match wins: the registry's folders (last first), then
    the shipped ``tasks/protocols``."""
    return [*(d / "protocols" for d in reversed(registry.dirs)), packaged_tasks_dir() / "protocols"]


def known_protocols(registry: TaskRegistry) -> list[str]:
    """The protocol names :func:`load_protocol` can find."""
    return sorted({p.stem for f in protocol_folders(registry) for p in f.glob("*.yaml")})


def load_protocol(name_or_path: str | Path, registry: TaskRegistry) -> Protocol:
    """Read and validate a protocol (see the module doc).

    Raises:
        ConfigError: On an unknown name (listing the known ones), an unreadable file, an unknown key
            or a bad value, naming the file and the field.
    """
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        found = [f / f"{name_or_path}.yaml" for f in protocol_folders(registry)
                 if (f / f"{name_or_path}.yaml").is_file()]
        if not found:
            raise ConfigError("--protocol", f"unknown protocol {str(name_or_path)!r} (known: "
                              f"{', '.join(known_protocols(registry))}; or give a .yaml file)")
        path = found[0]
    data = read_yaml(path, ConfigError, "protocol")
    source = str(path)
    if not isinstance(data, dict):
        raise ConfigError("<protocol>", f"expected a mapping of fields, got {type(data).__name__}", source)
    own = {k: data[k] for k in _OWN if k in data}
    values = {k: v for k, v in data.items() if k not in _OWN}
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(str(k) for k in set(values) - known)
    if unknown:
        raise ConfigError(str(unknown[0]), f"unknown field (known: {', '.join(sorted([*_OWN, *known]))})", source)
    from_dict(EvalConfig, values, source=source)  # every value checked now, against this file
    for key in ("description", "split", "evaluate_on"):
        if key in own and not isinstance(own[key], str):
            raise ConfigError(key, f"expected a string, got {own[key]!r}", source)
    if own.get("evaluate_on", "meta_test") not in LISTS:
        raise ConfigError("evaluate_on", f"expected one of {', '.join(LISTS)}, got {own['evaluate_on']!r}", source)
    tasks = own.get("tasks")
    if tasks is not None and (not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks)):
        raise ConfigError("tasks", f"expected a non-empty list of task names, got {tasks!r}", source)
    return Protocol(name=path.stem, path=source, eval=values, **own)


def merge(protocol: Protocol | None, command_line: dict[str, Any]) -> dict[str, Any]:
    """The :class:`EvalConfig` values of a run: the protocol's, each overridden by the command line's."""
    return {**(protocol.eval if protocol else {}), **command_line}
