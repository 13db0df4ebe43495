"""The second job of an evaluation beside measuring blocks of episodes: choosing fine-tuning's budget on
meta-val tasks (:func:`choose_finetune`) and sweeping the inner loop's steps (:func:`inner_steps_sweep`),
both on a :class:`~metalm.eval.fewshot.Harness`'s episodes and adaptation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ..data import Task
from ..data.episode import TextEpisode
from ..runtime.distributed import map_sharded
from .rows import FinetuneChoice
from .stats import mean_ci95, paired

#: A :class:`~metalm.eval.fewshot.Harness` (typed loosely: the harness imports this module).
Harness = Any

__all__ = ["choose_finetune", "inner_steps_sweep"]


def choose_finetune(harness: Harness, val_tasks: Sequence[Task]) -> FinetuneChoice:
    """Fine-tuning's optimizer, learning rate and steps, chosen by mean accuracy on meta-val
    episodes (first shot count; ties: the first in grid order), with the grid's accuracies. A grid
    of one point (a budget given, e.g. one chosen earlier) is that point, not measured."""
    shots = harness.config.shots[0]
    grid = harness.config.grid(harness.base.inner.steps)
    if len(grid) == 1 and len(grid[0][2]) == 1:
        (opt, lr, (steps,)), = grid
        return FinetuneChoice(harness.base.with_budget(opt, lr, steps),
                              [{"optimizer": opt, "lr": lr, "steps": steps, "val_accuracy": None}])
    eps = [ep for task in val_tasks for ep in harness.episodes(task, shots, 0, harness.config.val_episodes, salt=1)]

    def one(ep: TextEpisode) -> list[float]:
        support = harness.support(ep, max(grid[0][2]))
        prep = harness.prepared_queries(ep)[1] if ep.type != "generation" and harness.prefix_layer is not None else None
        accs = []
        for opt, lr, steps in grid:
            start = harness.base.with_budget(opt, lr, max(steps))
            for params in harness.adapt(start, support, steps):
                accs.append(harness.score_episode(params, ep, prep))
        return accs

    with harness.precision():
        per_episode = map_sharded(eps, one)
    points = [(opt, lr, k) for opt, lr, steps in grid for k in steps]
    means = [sum(a[i] for a in per_episode) / len(per_episode) for i in range(len(points))]
    best = max(range(len(points)), key=means.__getitem__)  # ties: the first in grid order
    opt, lr, steps = points[best]
    return FinetuneChoice(harness.base.with_budget(opt, lr, steps),
                          [{"optimizer": o, "lr": r, "steps": k, "val_accuracy": m}
                           for (o, r, k), m in zip(points, means, strict=True)],
                          _versus_runner_up(per_episode, points, means, best))


def _versus_runner_up(per_episode: Sequence[Sequence[float]], points: Sequence[tuple[str, float, int]],
                      means: Sequence[float], best: int) -> dict[str, Any]:
    """The chosen grid point against the next best on the same meta-val episodes (paired, one unit per
    episode): ``separated`` when the 95% interval of the difference excludes 0."""
    second = max((i for i in range(len(points)) if i != best), key=means.__getitem__)
    pair = paired([a[best] for a in per_episode], [a[second] for a in per_episode])
    opt, lr, steps = points[second]
    if pair["n"] < 2:  # one episode: no interval, nothing separated
        pair.update(ci95=None, p=None)
    return {"runner_up": {"optimizer": opt, "lr": lr, "steps": steps}, "diff": pair["diff"], "ci95": pair["ci95"],
            "p": pair["p"], "n": pair["n"],
            "separated": pair["ci95"] is not None and pair["diff"] - pair["ci95"] > 0}


def inner_steps_sweep(harness: Harness, tasks: Sequence[Task],
                      finetune: FinetuneChoice | None = None) -> list[dict[str, Any]]:
    """Macro accuracy of ``finetune`` and the trained rows at each of ``config.inner_steps``
    (first shot count, first seed), one inner-loop trajectory per episode."""
    shots, steps = harness.config.shots[0], sorted(harness.config.inner_steps or [])
    rows = [r for r in harness.rows(finetune).values() if r.init is not None and r.own_budget and r.init.adapt]
    items = [(t, ep) for t in tasks for ep in harness.episodes(t, shots)]

    def one(item: tuple[Task, TextEpisode]) -> dict[str, list[float]]:
        ep = item[1]
        support = harness.support(ep, max(steps))
        prep = harness.prepared_queries(ep)[1] if ep.type != "generation" and harness.prefix_layer is not None else None
        trajectories: dict[str, list[dict[str, Tensor]]] = {}  # shared with a twin
        out = {}
        for row in rows:
            if row.weights not in trajectories:
                trajectories[row.weights] = harness.adapt(row.init, support, steps)
            out[row.name] = [harness.score_episode(p, ep, prep, row.presentation) for p in trajectories[row.weights]]
        return out

    with harness.precision():
        got = map_sharded(items, one)
    n = harness.config.episodes
    out = []
    for row in rows:
        for j, k in enumerate(steps):
            # One unit per episode index: the mean over tasks (items are task-major).
            units = [sum(got[t * n + e][row.name][j] for t in range(len(tasks))) / len(tasks) for e in range(n)]
            mean, ci = mean_ci95(units)
            out.append({"method": row.name, "shots": shots, "inner_steps": k, "accuracy": mean, "ci95": ci})
    return out
