"""Queries scored as rows present them: alone or after demonstrations, direct or channel, calibrated
or not (Zhao et al. 2021; Min et al. 2022), every distinct scored row once for all the rows and episodes
that share it (:func:`presented_scores`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..data.demos import presented
from ..data.episode import Example, TextEpisode
from ..errors import TaskError
from .rows import Presentation, Row

__all__ = ["accuracy", "calibrated", "presented_scores"]

#: ``scorer(params, examples, normalize) -> option scores``: one scoring call over many rows.
Scorer = Callable[[Mapping[str, Tensor], Sequence[Example], str], list[list[float]]]


def accuracy(scores: Sequence[Sequence[float]], queries: Sequence[Example]) -> float:
    """The share of ``queries`` whose best-scored option is their label."""
    hits = [max(range(len(s)), key=s.__getitem__) == q.label for s, q in zip(scores, queries, strict=True)]
    return sum(hits) / len(hits)


def calibrated(scores: Sequence[float], content_free: Sequence[Sequence[float]]) -> list[float]:
    """Log of ``p / mean(p_cf)`` per option (Zhao et al. 2021, eq. 1 with ``W = diag(p_cf)^-1``, ``b = 0``):
    ``p`` are the option probabilities renormalized over the options."""
    def probs(s: Sequence[float]) -> Tensor:
        return torch.softmax(torch.tensor(s, dtype=torch.float64), 0)

    p_cf = torch.stack([probs(s) for s in content_free]).mean(0)
    return (probs(scores).log() - p_cf.log()).tolist()



def presented_scores(score: Scorer, params: Mapping[str, Tensor], rows: Sequence[Row],
                     episodes: Sequence[TextEpisode]) -> dict[str, list[list[list[float]]]]:
    """Option scores of every query of ``episodes`` as each of ``rows`` presents them (row -> episode ->
    query -> option), with one ``score`` call per normalization (``sum`` for channel rows, ``mean``
    for the others), each distinct scored row once."""
    out: dict[str, list[list[list[float]]]] = {}
    for channel in (False, True):
        group = [r for r in rows if r.presentation.channel == channel]
        if not group:
            continue
        rows_of = _Rows()  # one scored row per distinct (context, prompt, options)
        plan: dict[str, list[list[list[int]]]] = {}  # row -> episode -> query -> scored rows in flat
        for row in group:
            how = row.presentation
            for ep in episodes:
                per_query = [[rows_of.add(r) for r in scored] for scored in
                             presented(ep, demos=how.demos, channel=channel, calibrate=how.calibrate)]
                plan.setdefault(row.name, []).append(per_query)
        scores = score(params, rows_of.flat, "sum" if channel else "mean")
        for row in group:
            out[row.name] = [[_combine(row.presentation, [scores[i] for i in idx]) for idx in per_query]
                             for per_query in plan[row.name]]
    return out


def _combine(presentation: Presentation, scores: Sequence[Sequence[float]]) -> list[float]:
    """One query's option scores from its scored rows: channel rows hold one option each; a
    calibrated query's first row is the query, the rest its content-free prompts."""
    if presentation.channel:
        return [s[0] for s in scores]
    if presentation.calibrate:
        if len(scores) < 2:
            raise TaskError("content_free", "calibration needs content-free prompts; the sampler made none")
        return calibrated(scores[0], scores[1:])
    return list(scores[0])


class _Rows:
    """Distinct rows to score: :meth:`add` returns a row's index in :attr:`flat`, adding it once."""

    def __init__(self) -> None:
        self.flat: list[Example] = []
        self.where: dict[tuple[Any, ...], int] = {}

    def add(self, ex: Example) -> int:
        key = (ex.context, ex.prompt, tuple(ex.options))
        if key not in self.where:
            self.where[key] = len(self.flat)
            self.flat.append(ex)
        return self.where[key]
