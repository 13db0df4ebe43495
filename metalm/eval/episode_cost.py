"""What a new task costs each row of an evaluation on its own: the accuracy/cost comparison's cost axis.

A row's cost per new task is everything one user of that method pays for one task: the support
batch, the adaptation (gradient steps, a hypernetwork's forward pass, a composition search) and the
scoring of the task's queries (an in-context row reads its demonstrations with each query, so its
cost grows with the shots). Each row is measured alone on each episode (:meth:`Harness.alone`),
with nothing shared with another row or episode, in wall seconds and the tokens through the
model's top decoder layer (:class:`~metalm.eval.cost.AdaptationCost`). The accuracies are measured
apart, with work shared (:meth:`Harness.measure`); the costs take the first episodes of each task.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .cost import AdaptationCost
from .journal import Journal, rounded_costs

if TYPE_CHECKING:
    from ..data import Task
    from .fewshot import Harness
    from .rows import FinetuneChoice

__all__ = ["episode_costs"]


def episode_costs(harness: Harness, tasks: Sequence[Task], n: int, finetune: FinetuneChoice | None = None,
                  journal: Journal | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """What a new task costs each of ``harness``'s rows alone (:meth:`Harness.alone`: support batch,
    adaptation and queries, nothing shared), per shot count: mean seconds and forward tokens of an
    episode over the first ``n`` episodes (first seed) of every task in ``tasks``; each task weighs
    the same (a macro mean, like the accuracies'). With a ``journal``, the (task, shot count) pairs it
    holds are read back and each one measured is added to it.

    Returns:
        ``{row: {str(shots): {"seconds", "forward_tokens", "episodes"}}}``.
    """
    rows = list(harness.rows(finetune).values())
    records: dict[str, dict[int, list[list[float]]]] = {}
    for shots in harness.config.shots:
        for task in tasks:
            key = f"{task.name}/{shots}"
            episodes = harness.episodes(task, shots)[:n]
            done = dict(journal.episode_costs.get(key, {})) if journal is not None else {}
            todo = [r for r in rows if len(done.get(r.name, [])) != len(episodes)]  # journaled for another n
            if todo:
                meter = AdaptationCost(harness.model)
                start = time.perf_counter()
                for ep in episodes:
                    for row in todo:
                        with meter.measure(row.name):
                            harness.alone(row, ep)
                if journal is not None:
                    journal.put_episode_cost(key, meter.records, time.perf_counter() - start)
                done.update(rounded_costs(meter.records))  # as the journal holds them: resumed figures equal
            for row in rows:
                records.setdefault(row.name, {}).setdefault(shots, []).extend(done[row.name])
    return {row: {str(k): {"seconds": statistics.fmean(s for s, _ in recs),
                           "forward_tokens": statistics.fmean(t for _, t in recs), "episodes": len(recs)}
                  for k, recs in per.items()} for row, per in records.items()}
