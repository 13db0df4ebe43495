"""The evaluation recipe: ``evaluate(...) -> report``, a function over values.

The CLI's ``metalm eval``, notebooks and benchmark scripts call :func:`evaluate` (``metalm.evaluate``)
with a protocol and/or evaluation values (or an :class:`~metalm.eval.EvalConfig`) and either trained
run folders or a base model name; it merges the protocol's values, builds the
rows (baselines, each run's trained rows), draws the episodes once, chooses fine-tuning's budget on
meta-val tasks, measures every row on the same episodes and returns the report dict that
``eval.json`` holds. With ``output`` set, the report is written there (JSON) and measured blocks are
journaled beside it meanwhile, so a killed evaluation resumes (``resume=True``); the output path is
locked against a second writer.

    report = evaluate(model="smollm2-135m", split="pool", shots=[1, 4], episodes=20)
    report = evaluate(runs=["runs/main"], protocol="main", keep=True)     # what `make main` measures
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import from_dict, to_dict
from ..data import TaskRegistry, load_split, packaged_tasks_dir, task_path
from ..errors import ConfigError
from ..run import TrainConfig, build_model, load_run, load_train_config, run_kind, task_lists
from ..runtime import distributed
from ..runtime.environment import versions
from ..runtime.files import write_atomic
from .budgets import choose_finetune as choose_budget
from .budgets import inner_steps_sweep
from .compare import RunRows, Separate, measure_separately, run_checkpoint, run_paths, run_rows
from .episode_cost import episode_costs
from .fewshot import Harness, eval_tasks
from .inits import init_from_values, init_of
from .journal import Journal, journal_paths
from .protocol import Protocol, load_protocol, merge
from .rows import FinetuneChoice
from .settings import BASELINES, EvalConfig, default_methods, trained_by
from .truncation import warning as truncation_warning


@dataclasses.dataclass
class Setting:
    """What the rows are measured on: the model (a run's or a base model's), its pretrained
    initialization, the runs' rows and checkpoints (each read once)."""

    config: TrainConfig
    tokenizer: Any
    learner: Any
    base: Any
    rows: RunRows | None
    checkpoints: dict[str, Any]


def run_configs(runs: Sequence[str | Path]) -> tuple[list[TrainConfig], list[str]]:
    """Each run folder's ``TrainConfig`` and evaluation row kind (``meta``, ``mtl``, ``hyper``).

    Raises:
        ConfigError: If a folder holds no trained run.
    """
    for run in runs:
        if not (Path(run) / "config.yaml").is_file():
            raise ConfigError("--run-dir", f"{run} holds no trained run (no config.yaml); run `metalm train` first")
    configs = [load_train_config(Path(r) / "config.yaml") for r in runs]
    return configs, [run_kind(c) for c in configs]


def build_setting(runs: Sequence[str], model: str | None, device: torch.device, configs: list[TrainConfig],
                  kinds: list[str], steps: Mapping[str, int | None] | None = None) -> Setting:
    """The model and rows of an evaluation of ``runs`` (their configs and kinds: :func:`run_configs`;
    the first run's model; each one's checkpoint of its step in ``steps``, else its newest) or of
    ``model``."""
    steps = steps or {}
    checkpoints = {r: run_checkpoint(r, steps.get(r)) for r in runs}  # each read and verified once for the command
    if runs:
        first = load_run(runs[0], device, checkpoints[runs[0]])
        base = init_from_values(first.learner, first.base, trained=False)
        rows = run_rows(runs, configs, kinds, first, base, checkpoints)
        return Setting(first.config, first.tokenizer, first.learner, base, rows, checkpoints)
    config = from_dict(TrainConfig, {"model": model}, source="command line")
    tokenizer, _, _, learner = build_model(config, device)
    return Setting(config, tokenizer, learner, init_of(learner, trained=False), None, {})


def task_names(config: TrainConfig, registry: TaskRegistry, *, split: str | None, tasks: Sequence[str] | None,
               evaluate_on: str | None, protocol: Protocol | None) -> tuple[list[str], list[str]]:
    """The evaluated task names and the meta-val names fine-tuning is chosen on. Explicit ``tasks``
    win; then a protocol's task list (unless ``split``/``evaluate_on`` override it); then the split's
    meta-test (or meta-val) tasks. Sets ``config.split`` when ``split`` is given."""
    effective = split or (protocol.split if protocol else None)
    if effective:
        config.split = effective
    _, val, heldout = task_lists(config, registry)
    on = evaluate_on or (protocol.evaluate_on if protocol else "meta_test")
    if tasks:
        names = list(tasks)
    elif protocol is not None and protocol.tasks and not split and not evaluate_on:
        names = list(protocol.tasks)
    else:
        names = heldout if on == "meta_test" else load_split(config.split, registry).meta_val
    return names, val


def open_journal(stack: contextlib.ExitStack, where: Path, fingerprint: dict[str, Any], resume: bool,
                 every: int | None = None, shard: tuple[int, int] | None = None) -> Journal:
    """The journal beside the report ``where`` (blocks in pieces of ``every`` episodes when given; shard
    ``(I, N)``'s own, reading the other shards': :func:`~metalm.eval.journal.journal_paths`): the output
    path locked for this writer, SIGTERM/SIGINT ending the evaluation with a note on how to resume."""
    from ..runtime.longrun import RunLock, StopSignals

    own, others = journal_paths(where, shard)
    others = others if resume or shard else []  # a fresh unsharded evaluation starts from nothing
    lock = f".{where.name}.shard-{shard[0]}.lock" if shard else f".{where.name}.lock"
    stack.enter_context(RunLock(where.parent, lock, "output path"))  # one writer per output (and shard)
    journal = Journal(own, fingerprint, resume, every, others)
    stack.enter_context(StopSignals(immediate=True, what="the evaluation",
                                    note=f": its measured blocks are in {journal.path}; --resume continues"))
    return journal


def choose_finetune(harness: Harness, registry: TaskRegistry, val: Sequence[str], journal: Journal | None,
                    log: Callable[[str], None] | None) -> FinetuneChoice:
    """Fine-tuning's budget, chosen on the meta-val tasks ``val`` (or the journal's earlier choice)."""
    if journal is not None and journal.finetune is not None:
        return FinetuneChoice.from_record(harness.base, journal.finetune)
    start = time.perf_counter()
    choice = choose_budget(harness, eval_tasks(registry, val))
    if journal is not None:
        journal.put_finetune(choice.record(), time.perf_counter() - start)
    if log is not None:
        ft = choice.init.inner
        log(f"finetune: {ft.optimizer}, inner lr {ft.lr:g}, {ft.steps} steps, chosen on meta-val tasks "
            f"{', '.join(val)}")
        if choice.warning():
            log(choice.warning())
    return choice


def journaled_values(config: EvalConfig) -> dict[str, Any]:
    """The :class:`EvalConfig` values a journal's figures depend on: all but the seeds and methods (blocks
    are keyed by seed and hold a list per method, so a journal of more serves a run of fewer: a study
    stopped early, or narrowed) and the costs' episodes (measured apart from the accuracies). The
    precision is named only when it is not float32, and ``rows`` only when it narrows them, so journals
    begun before either existed resume."""
    values = {k: v for k, v in to_dict(config).items() if k not in ("seeds", "methods", "cost_episodes")}
    if values.get("autocast") == "float32":
        del values["autocast"]
    if values.get("rows", ()) is None:
        del values["rows"]
    return values


def check_reference(config: EvalConfig, harness: Harness, rows: RunRows | None) -> None:
    """Refuse a ``reference`` that is not among the evaluated rows, and a name of ``config.rows`` no row has,
    naming the rows (:class:`ConfigError`), before any is measured; with runs measured on models of their
    own (their rows named once they are loaded) the report's summary checks it
    (:func:`~metalm.eval.summary.summarize`)."""
    every = list(harness.rows(any_budget=True, every=True))  # before fine-tuning's budget is chosen
    evaluated = [r for r in every if config.rows is None or r in config.rows]
    if config.reference is not None and config.reference not in evaluated and not (rows and rows.separate):
        raise ConfigError("--reference", f"{config.reference!r} is not evaluated (evaluated: {', '.join(evaluated)})")
    unknown = [r for r in config.rows or [] if r not in every]
    if unknown and not (rows and rows.separate):
        raise ConfigError("rows", f"no row is named {unknown[0]!r} (the rows: {', '.join(every)})")


def check_sources(runs: Sequence[str], model: str | None, step: int | None) -> None:
    """Refuse both or neither of runs and a model, and a step without runs (:class:`ConfigError`)."""
    if bool(runs) == bool(model):
        raise ConfigError("--run-dir/--model", "give exactly one")
    if step is not None and not runs:
        raise ConfigError("--step", f"step {step} is a checkpoint of trained runs: give --run-dir, not --model")


def check_output(output: str | Path | None, journal_every: int | None, shard: tuple[int, int] | None = None) -> None:
    """Refuse an output path that is a folder, a bad ``journal_every`` and a shard without an output or
    under ``torchrun`` (:class:`ConfigError`)."""
    if output is not None and Path(output).is_dir():
        raise ConfigError("output", f"{output} is a folder; the report (--json, or the run's eval.json) is a file")
    Journal.check_every(journal_every)
    if shard is not None:
        check_shard(shard)
        if output is None:
            raise ConfigError("--shard", "a shard journals its blocks beside the report: give --json (or a run)")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("--shard", "shards are separate processes of one thread or more each, not torchrun's "
                                         "(which deals the blocks itself)")


def check_shard(shard: Any) -> tuple[int, int]:
    """``shard`` as ``(I, N)`` with ``0 <= I < N``, or a :class:`ConfigError`."""
    ok = isinstance(shard, tuple) and len(shard) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                              for x in shard)
    if not ok or not 0 <= shard[0] < shard[1]:
        raise ConfigError("--shard", f"must be I/N with 0 <= I < N (this process measures every N-th block from "
                                     f"the I-th), got {shard!r}")
    return shard


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)`` (:func:`check_shard`)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError("--shard", f"must be I/N, e.g. 0/2, got {text!r}") from None
    return check_shard((i, n))


def eval_config(config: EvalConfig | None, protocol: Protocol | None, overrides: Mapping[str, Any],
                kinds: Sequence[str], source: str = "evaluate") -> EvalConfig:
    """The evaluation's settings: ``config`` as given, or the protocol's values overridden by ``overrides``
    (protocol < overrides), the methods by default the baselines plus the runs' rows (``kinds``).

    Raises:
        ConfigError: If ``config`` comes with overrides or a protocol that sets evaluation values.
    """
    if config is not None:
        if overrides or (protocol is not None and protocol.eval):
            raise ConfigError("config", "give an EvalConfig, or a protocol and EvalConfig fields as keyword "
                                        "overrides (protocol < overrides), not both")
        return config
    values = merge(protocol, dict(overrides))
    values.setdefault("methods", default_methods(kinds))
    return from_dict(EvalConfig, values, source=source)


def own_report(run: str | Path, step: int | None) -> Path:
    """Where a run keeps the report of its evaluation: ``eval.json``, or ``eval.step-NNNNNNN.json`` for
    the checkpoint of step ``step`` (beside the newest's)."""
    return Path(run) / ("eval.json" if step is None else f"eval.step-{step:07d}.json")


def _complete(report: dict[str, Any], harness: Harness, eval_list: Sequence[Any], finetune: FinetuneChoice | None,
              separate: Separate, book: Journal | None) -> None:
    """Add to ``report`` the rows measured apart (other adapters), the inner-steps sweep, each row's cost
    alone on a new task, and the measuring time (from the journal: resumed sessions included)."""
    config = harness.config
    report["budgets"].update(separate.budgets)
    report["adaptation_cost"] = dict(sorted({**report["adaptation_cost"], **separate.costs}.items()))
    if config.inner_steps:
        report["inner_steps_sweep"] = inner_steps_sweep(harness, eval_list, finetune)
    if config.cost_episodes:  # after the accuracies: each row alone on the first episodes
        report["episode_cost"] = dict(sorted({**episode_costs(harness, eval_list, config.cost_episodes, finetune,
                                                               book), **separate.episode_costs}.items()))
    if book is not None:  # choosing fine-tuning's budget and every block, resumed sessions included
        report["measuring_seconds"] = round(book.seconds, 1)
        report.update({"episode_cost_seconds": round(book.cost_seconds, 1)} if config.cost_episodes else {})


def check_methods(methods: Sequence[str], kinds: Sequence[str]) -> None:
    """Refuse a trained row without a run of its kind (``kinds``: the runs' rows) (:class:`ConfigError`)."""
    for method in methods:
        if method not in BASELINES and method not in kinds:
            raise ConfigError("--methods", f"{method} needs {trained_by(method)} among --run-dir")


def _measure(harness: Harness, eval_list: Sequence[Any], setting: Setting, configs: Sequence[Any], kinds: Sequence[str],
             device: torch.device, book: Journal | None, finetune: FinetuneChoice | None,
             shard: tuple[int, int] | None, progress: bool) -> tuple[dict[Any, Any], Separate]:
    """Every row's per-episode accuracies: the harness's rows, then the runs measured apart (other adapters)."""
    data = harness.measure(eval_list, progress=progress, journal=book, finetune=finetune, shard=shard)
    separate = Separate({}, {}, {})
    if setting.rows and setting.rows.separate:
        separate = measure_separately(harness, eval_list, setting.rows.separate, configs, kinds, device,
                                      setting.checkpoints, progress=progress, journal=book, finetune=finetune,
                                      shard=shard)
        data.update(separate.data)
    return data, separate


def _shard_done(shard: tuple[int, int], book: Journal, harness: Harness, eval_list: Sequence[Any],
                finetune: FinetuneChoice | None, log: Callable[[str], None] | None) -> dict[str, Any]:
    """What a shard returns once its blocks are journaled: where, and how many blocks of the evaluation
    (the first harness's rows) no process has journaled yet (read again: other shards wrote meanwhile)."""
    again = Journal.read(book.path, book.others)
    keys = [Journal.key(t.name, k, s) for t, k, s in harness.blocks(eval_list)]
    missing = len(again.missing(keys, [r.name for r in harness.rows(finetune).values()]))
    if log is not None:
        log(f"shard {shard[0]}/{shard[1]}: its blocks are journaled in {book.path}; {missing} of {len(keys)} "
            f"blocks not yet journaled by any shard. When every shard is done, the same command without --shard "
            f"(with --resume) measures what is left and each row's cost alone, and writes the report.")
    return {"shard": list(shard), "journal": str(book.path), "missing": missing}


def evaluate(config: EvalConfig | None = None, *, runs: Sequence[str | Path] = (), model: str | None = None,
             protocol: str | Path | Protocol | None = None, split: str | None = None,
             tasks: Sequence[str] | None = None, evaluate_on: str | None = None, task_dirs: Sequence[str | Path] = (),
             step: int | None = None, output: str | Path | None = None, keep: bool = False, resume: bool = False,
             journal_every: int | None = None, shard: tuple[int, int] | None = None, progress: bool = True,
             log: Callable[[str], None] | None = print, source: str = "evaluate", **overrides: Any) -> dict[str, Any]:
    """The whole evaluation recipe (`metalm eval` parses, calls this and prints): ``runs`` (run or checkpoint
    folders; runs of one adapter share the first one's model) or the base ``model`` on held-out episodes;
    returns the report ``eval.json`` holds. ``metalm.evaluate(runs=["runs/main"], protocol="main",
    shots=[1, 4])``: the protocol's tasks and values, each overridden by a keyword (protocol < overrides);
    without ``methods``, the baselines plus the runs' own rows. Errors are :class:`ConfigError` naming the
    argument.

    Args:
        config: All evaluation settings at once (:class:`EvalConfig`), instead of protocol and overrides.
        runs / model / step: Runs (a run folder at ``step``'s checkpoint, else its newest), or a model.
        protocol: A protocol's name, a YAML path or a :class:`Protocol`; recorded in the report.
        split / tasks / evaluate_on / task_dirs: Which tasks (:func:`task_names`); the researcher's task folders.
        output: The report's path (JSON, written atomically); measured blocks (pieces of ``journal_every``
            episodes) are journaled beside it till then, and ``resume`` reads them.
        keep: With runs, also keep the report in the first run's folder (:func:`own_report`), and write and
            journal it there without ``output``.
        shard: ``(I, N)``: measure every ``N``-th block from the ``I``-th, journaled apart, and return
            ``{"shard", "journal", "missing"}``, no report; the ``N`` shards side by side, then the same
            evaluation without ``shard`` writes it (:mod:`metalm.eval.journal`).
        log / source: Where progress lines and warnings go (``None``: nowhere); what names the overrides.
        **overrides: :class:`EvalConfig` fields.
    """
    runs, steps = run_paths(runs, step)  # a run folder, or one of its checkpoints: resolved once
    check_sources(runs, model, step)
    configs, kinds = run_configs(runs)
    dirs = list(dict.fromkeys([*(configs[0].task_dirs if configs else []), *map(str, task_dirs)]))
    registry = TaskRegistry.from_dirs(packaged_tasks_dir(), *task_path(), *dirs)  # built once
    if protocol is not None and not isinstance(protocol, Protocol):
        protocol = load_protocol(protocol, registry)
    config = eval_config(config, protocol, overrides, kinds, source)
    own = own_report(runs[0], steps[runs[0]]) if keep and runs else None
    output = output if output is not None else own
    check_output(output, journal_every, shard)  # before the model loads and the measuring
    ctx = distributed.init()  # under torchrun the episodes are dealt over the processes
    device = torch.device("cuda", ctx.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    check_methods(config.methods, kinds)
    setting = build_setting(runs, model, device, configs, kinds, steps)
    setting.config.task_dirs = dirs
    names, val = task_names(setting.config, registry, split=split, tasks=tasks, evaluate_on=evaluate_on,
                            protocol=protocol)
    eval_list = eval_tasks(registry, names)
    rows = setting.rows
    harness = Harness(setting.learner.model, setting.tokenizer, setting.base, config, rows.rows if rows else [],
                      setting.learner.selection.lowest_adapted_layer())
    check_reference(config, harness, rows)  # before the journal opens and anything is measured
    with contextlib.ExitStack() as stack:
        book = None
        if output is not None and not ctx.enabled:  # one process: a journal to resume from (torchrun: none)
            fingerprint = {"eval": journaled_values(config), "model": model, "tasks": names, "val": val,
                           "runs": [[str(Path(r).resolve()), setting.checkpoints[r].name] for r in runs]}
            book = open_journal(stack, Path(output), fingerprint, resume, journal_every, shard)
        finetune = choose_finetune(harness, registry, val, book, log if ctx.is_main else None) \
            if "finetune" in config.methods else None
        data, separate = _measure(harness, eval_list, setting, configs, kinds, device, book, finetune, shard, progress)
        if shard is not None:  # no report from a part: the unsharded run assembles it
            return _shard_done(shard, book, harness, eval_list, finetune, log)
        report = harness.summarize(data, eval_list, finetune)
        cut = truncation_warning(report["truncated"], harness.max_length)
        if cut and log is not None and ctx.is_main:
            log(cut)
        report.update(tasks=names, checkpoints={r: setting.checkpoints[r].name for r in runs},  # each run's weights
                      versions=versions(),  # the packages that produced these numbers (requirements/lock.txt)
                      eval_config=to_dict(config))  # every value the evaluation ran with
        if protocol is not None:
            report["protocol"] = protocol.record(config, setting.config.split, names)
        _complete(report, harness, eval_list, finetune, separate, book)
        if ctx.is_main:
            for path in dict.fromkeys(p for p in (output, own) if p is not None):  # never a half-written report
                write_atomic(Path(path), json.dumps(report, indent=1))
        if book is not None:
            book.close()  # after the report is written: a kill in between loses nothing
    return report
