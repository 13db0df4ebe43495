"""Several trained runs on the same held-out episodes: one row per run (``metalm eval --run-dir A --run-dir B``).

The first run's harness evaluates the untrained baselines and its own row; each further run adds
its row on the same tasks and episodes (the harness draws them from the same seed). A multi-task
run (``mtl``) adapts with the inner loop of the first meta-learning run, so both get the same
adaptation budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import InnerConfig
from ..errors import ConfigError
from .fewshot import EvalConfig, Harness


def run_kind(config: Any) -> str:
    """``mtl`` for a multi-task run, ``meta`` for a meta-learning run (a ``TrainConfig``)."""
    return "mtl" if config.algorithm["name"] == "multitask" else "meta"


def run_label(config: Any, kind: str, n_runs: int) -> str:
    """Row name of a run: ``mtl`` for multi-task; ``meta:<algorithm>`` when several runs are compared."""
    return "mtl" if kind == "mtl" else f"meta:{config.algorithm['name']}" if n_runs > 1 else "meta"


def reference_inner(configs: Sequence[Any], kinds: Sequence[str]) -> InnerConfig | None:
    """The inner loop of the first meta-learning run (the one ``mtl`` rows adapt with), if any."""
    return next((c.algorithm_config().inner for c, k in zip(configs, kinds, strict=True) if c and k == "meta"), None)


def add_runs(report: dict[str, Any], tasks: Sequence[Any], runs: Sequence[str], configs: Sequence[Any],
             kinds: Sequence[str], eval_cfg: EvalConfig, device: torch.device, *, model: str,
             progress: bool = True) -> None:
    """Add the rows of ``runs[1:]`` to the first run's ``report`` and rename every run's rows.

    Args:
        report: The first run's :meth:`Harness.run` output; extended in place.
        tasks: The tasks it was evaluated on (``eval_tasks``).
        runs: Run directories, the first one already evaluated.
        configs: Their ``TrainConfig`` objects.
        kinds: Their :func:`run_kind`.
        eval_cfg: The evaluation config (its methods decide which runs are evaluated).
        model: The first run's base model; every run must share it.

    Raises:
        ConfigError: If a run trained another base model than the first.
    """
    from ..train import load_run

    labels = [run_label(c, k, len(runs)) for c, k in zip(configs, kinds, strict=True)]
    rename = {kinds[0]: labels[0]}
    inner = reference_inner(configs, kinds)
    for run, kind, label in zip(runs[1:], kinds[1:], labels[1:], strict=True):
        if kind not in eval_cfg.methods:
            continue
        config, tokenizer, algorithm, base = load_run(run, device)
        if config.model != model:
            raise ConfigError("--run-dir", f"{run} trained {config.model}, not {model}: "
                                            "compared runs must share the base model")
        if kind == "mtl" and inner is not None:
            algorithm.inner = inner
        trained = {k: v.detach().clone() for k, v in algorithm.meta_parameters().items()}
        harness = Harness(algorithm, tokenizer, base, trained,
                          dataclasses.replace(eval_cfg, methods=[kind], inner_steps=None))
        extra = harness.run(tasks, progress=progress)
        taken = {r["method"] for r in report["macro"]} | set(rename.values())
        name = label if label not in taken else f"{label}({Path(run).name})"
        for row in extra["results"] + extra["macro"]:
            row["method"] = name
        report["results"] += extra["results"]
        report["macro"] += extra["macro"]
        del harness, algorithm
    for row in report["results"] + report["macro"] + report.get("inner_steps_sweep", []):
        row["method"] = rename.get(row["method"], row["method"])
