"""Several trained runs on the same held-out episodes: one row per run (``metalm eval --run-dir A --run-dir B``).

Runs that share the first run's model, adapter and parameter selection are rows of the first run's
harness: their initializations are read from their checkpoints as values (:class:`Init`) and
adapted on the same model object, episode by episode, beside every baseline. A run with another
adapter needs a model of its own and is measured by a harness of its own on the same episodes
(the episodes depend only on the task, shot count and seed), as is a HyperLoRA run after the first
(its hypernetwork belongs to its own learner), and a LoRA library. A multi-task run (``mtl``) adapts with
the inner loop of the first meta-learning run, so both get the same adaptation budget (what an
algorithm declares: :attr:`MetaLearner.borrows_inner` / :attr:`MetaLearner.lends_inner`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..algorithms import algorithm_class
from ..config import InnerConfig
from ..errors import ConfigError
from ..run import load_run
from ..runtime.checkpoint import Checkpoint, latest_checkpoint, list_checkpoints, read_checkpoint, read_step
from .episode_cost import episode_costs
from .fewshot import Harness, Measurements, Trained
from .inits import Init, init_from_checkpoint, init_from_values, trained_rows
from .journal import Journal
from .rows import FinetuneChoice


def run_label(config: Any, kind: str, n_runs: int) -> str:
    """Row name of a run: its row ``kind`` (:attr:`MetaLearner.row`: ``meta``, ``mtl`` ...), with
    ``:<algorithm>`` when several runs are compared and the algorithm names its rows
    (:attr:`MetaLearner.row_names_algorithm`: ``meta:maml``); ``+icl`` when its queries are scored after
    the support set as demonstrations (MetaICL, gradient + in-context adaptation)."""
    name = config.algorithm["name"]
    cls = algorithm_class(name)
    label = f"{kind}:{name}" if n_runs > 1 and cls.row_names_algorithm else kind
    return label + ("+icl" if cls.evaluation(config.algorithm_config())["queries"] != "plain" else "")


def reference_inner(configs: Sequence[Any]) -> InnerConfig | None:
    """The inner loop of the first run whose algorithm :attr:`~MetaLearner.lends_inner` (the one the rows of
    runs that :attr:`~MetaLearner.borrows_inner` adapt with), if any."""
    return next((c.algorithm_config().inner for c in configs
                 if c and algorithm_class(c.algorithm["name"]).lends_inner), None)


@dataclasses.dataclass
class RunRows:
    """The rows of several runs: those the first run's harness evaluates (``rows``), and runs that need
    a model of their own (``separate``: run folder, label and kind)."""

    rows: list[Trained]
    separate: list[tuple[str, str, str]]


def _labels(runs: Sequence[str], configs: Sequence[Any], kinds: Sequence[str]) -> list[str]:
    out: list[str] = []
    for run, config, kind in zip(runs, configs, kinds, strict=True):
        label = run_label(config, kind, len(runs))
        out.append(label if label not in out else f"{label}({Path(run).name})")
    return out


def _with_inner(init: Init, config: Any, inner: InnerConfig | None) -> Init:
    """``init`` with the reference inner loop when its run's algorithm borrows one."""
    borrows = algorithm_class(config.algorithm["name"]).borrows_inner
    return dataclasses.replace(init, inner=inner, lr=None) if borrows and inner is not None else init


def run_rows(runs: Sequence[str], configs: Sequence[Any], kinds: Sequence[str], first: Any, base: Init,
             checkpoints: Mapping[str, Checkpoint]) -> RunRows:
    """The trained rows of ``runs`` (their ``TrainConfig``, :func:`run_kind` and :func:`run_checkpoint`);
    ``first`` is the first run (a loaded :class:`~metalm.run.Run`, its trained values passed as values)
    and ``base`` its pretrained :class:`Init`.

    Raises:
        ConfigError: If a run trained another base model than the first.
    """
    inner = reference_inner(configs)
    out = RunRows([], [])
    for i, (run, config, kind, label) in enumerate(zip(runs, configs, kinds, _labels(runs, configs, kinds),
                                                       strict=True)):
        if i and config.model != configs[0].model:
            raise ConfigError("--run-dir", f"{run} trained {config.model}, not {configs[0].model}: "
                                            "compared runs must share the base model")
        if i == 0:
            out.rows.extend(Trained(name, kind, _with_inner(init, config, inner))
                            for name, init in trained_rows(first.learner, first.trained, label).items())
            continue
        if not algorithm_class(config.algorithm["name"]).amortized and \
                (config.adapter, config.meta, config.dtype) == (configs[0].adapter, configs[0].meta, configs[0].dtype):
            alg = config.algorithm_config()
            init = init_from_checkpoint(checkpoints[run], base, alg.inner,
                                        algorithm_class(config.algorithm["name"]).evaluation(alg))
        else:
            init = None
        if init is None:
            out.separate.append((run, label, kind))
        else:
            out.rows.append(Trained(label, kind, _with_inner(init, config, inner)))
    return out


@dataclasses.dataclass
class Separate:
    """What :func:`measure_separately` measured: per-episode accuracies (:data:`Measurements`), each
    row's adaptation in words, each row's adaptation cost (:meth:`AdaptationCost.summary`) and, when
    ``cost_episodes`` is set, what a new task costs each row alone (:func:`episode_costs`)."""

    data: Measurements
    budgets: dict[str, str]
    costs: dict[str, dict[str, float]]
    episode_costs: dict[str, dict[str, dict[str, float]]] = dataclasses.field(default_factory=dict)


def measure_separately(harness: Harness, tasks: Sequence[Any], separate: Sequence[tuple[str, str, str]],
                       configs: Sequence[Any], kinds: Sequence[str], device: torch.device,
                       checkpoints: Mapping[str, Checkpoint], *, progress: bool = True,
                       journal: Journal | None = None, finetune: FinetuneChoice | None = None,
                       shard: tuple[int, int] | None = None) -> Separate:
    """Measure runs with another adapter on ``harness``'s episodes, each on a model of its own (from
    its checkpoint in ``checkpoints``, read already), with fine-tuning's chosen budget ``finetune`` for
    their ``@ft`` rows.

    Returns their per-episode accuracies, their rows' adaptation budgets and adaptation costs. With a
    ``journal`` their blocks are recorded beside the first harness's rows (a killed evaluation resumes
    them too; ``shard``: :meth:`Harness.measure`'s).
    """
    from .rows import budget

    inner = reference_inner(configs)
    out = Separate({}, {}, {})
    for run, label, kind in separate:
        if kind not in harness.config.methods:
            continue
        loaded = load_run(run, device, checkpoints[run])
        tokenizer, learner = loaded.tokenizer, loaded.learner
        base = init_from_values(learner, loaded.base, trained=False)
        rows = [Trained(name, kind, _with_inner(init, loaded.config, inner))
                for name, init in trained_rows(learner, loaded.trained, label).items()]
        other = Harness(learner.model, tokenizer, base, dataclasses.replace(harness.config, methods=[kind]), rows,
                        learner.selection.lowest_adapted_layer(), episode_cache=harness.episode_cache)
        out.data.update(other.measure(tasks, progress, journal, finetune, shard))
        out.budgets.update({name: budget(row.init, row.presentation) for name, row in other.rows(finetune).items()
                            if row.init})
        out.costs.update(other.cost.summary())
        if harness.config.cost_episodes and shard is None:
            out.episode_costs.update(episode_costs(other, tasks, harness.config.cost_episodes, finetune, journal))
        del other, learner
    return out


def run_paths(paths: Sequence[str | Path], step: int | None = None) -> tuple[list[str], dict[str, int | None]]:
    """The run folders of ``paths`` and the step of the checkpoint to read from each (``None``: the newest).
    A path is a run folder (its checkpoint of ``step`` if given) or one of its checkpoint folders
    (``RUN/checkpoints/step-NNNNNNN``: that one), so runs can be compared each at its own step.

    Raises:
        ConfigError: For a run given twice, or a checkpoint folder of another step than ``step``.
    """
    runs: list[str] = []
    steps: dict[str, int | None] = {}
    for path in map(Path, paths):
        at = read_step(path) if path.parent.name == "checkpoints" else None
        if at is not None and step is not None and at != step:
            raise ConfigError("--step", f"{path} is the checkpoint of step {at}, not of step {step}")
        run = str(path.parent.parent) if at is not None else str(path)
        if run in steps:
            raise ConfigError("--run-dir", f"{run} is given twice (one checkpoint of a run per evaluation)")
        runs.append(run)
        steps[run] = at if at is not None else step
    return runs, steps


def run_checkpoint(run: str | Path, step: int | None = None) -> Checkpoint:
    """The run's newest intact checkpoint, or the one of ``step`` (a learning curve's point), read and
    verified (once per command: pass it along).

    Raises:
        ConfigError: Without a checkpoint, or without one at ``step`` (naming the steps there are).
        MetalmError: If the checkpoint of ``step`` is corrupt.
    """
    if step is not None:
        found = {at: p for p in list_checkpoints(Path(run)) if (at := read_step(p)) is not None}
        if step not in found:
            have = ", ".join(map(str, sorted(found))) or "none"
            raise ConfigError("--step", f"{run} has no checkpoint of step {step} (steps checkpointed: {have}; "
                                        "keep_checkpoints decides how many are kept)")
        return read_checkpoint(found[step])
    found = latest_checkpoint(Path(run))
    if found is None:
        raise ConfigError("--run-dir", f"{run} holds no checkpoint; run `metalm train` first")
    return found
