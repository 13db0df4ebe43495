"""Blocks of episodes as measured values (:class:`Block`), and how one is obtained through an evaluation's
journal (:func:`journaled_block`): read back when journaled, else measured whole or in pieces and
journaled as soon as measured (:mod:`metalm.eval.journal`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

from ..data.episode import TextEpisode
from .journal import Journal
from .rows import Row

__all__ = ["Block", "Measure", "journaled_block", "recorded_block"]


@dataclasses.dataclass
class Block:
    """One block of episodes measured: per-episode accuracy of each row, and each adapted row's
    adaptations as ``(seconds, forward tokens)`` (:class:`~metalm.eval.cost.AdaptationCost`)."""

    accuracy: dict[str, list[float]]
    cost: dict[str, list[tuple[float, int]]]


def recorded_block(rows: Sequence[Row], accuracy: Mapping[str, list[float]],
                   costs: Mapping[str, list[list[float]]]) -> Block:
    """A block (or piece) read back from a journal, in the rows' order, as a measured one."""
    return Block({r.name: accuracy[r.name] for r in rows},
                 {r.name: [tuple(c) for c in costs[r.name]] for r in rows if r.name in costs})


#: ``measure(rows, episodes) -> Block`` (:meth:`metalm.eval.fewshot.Harness.block`).
Measure = Callable[[Sequence[Row], Sequence[TextEpisode]], "Block"]


def journaled_block(measure: Measure, key: str, rows: Sequence[Row], episodes: Callable[[], Sequence[TextEpisode]],
                    journal: Journal | None) -> Block:
    """Block ``key`` of ``rows``: read back from ``journal`` when it holds every row, else measured by
    ``measure`` on ``episodes()`` (in pieces of ``journal.every`` episodes when set) and journaled."""
    if journal is not None and {r.name for r in rows} <= set(journal.blocks.get(key, {})):
        return recorded_block(rows, journal.blocks[key], journal.costs.get(key, {}))
    if journal is not None and journal.every:
        return _in_pieces(measure, key, rows, episodes(), journal)
    start = time.perf_counter()
    block = measure(rows, episodes())
    if journal is not None:
        journal.put(key, block.accuracy, time.perf_counter() - start, cost=block.cost)
    return block


def _in_pieces(measure: Measure, key: str, rows: Sequence[Row], episodes: Sequence[TextEpisode],
               journal: Journal) -> Block:
    """``measure``, measured and journaled ``journal.every`` episodes at a time; pieces already in
    the journal are read back. The whole block is journaled last (its seconds are its pieces')."""
    wanted = {r.name for r in rows}
    done = journal.pieces.get(key, {})
    accuracy: dict[str, list[float]] = {r.name: [] for r in rows}
    cost: dict[str, list[tuple[float, int]]] = {}
    for start in range(0, len(episodes), journal.every):
        if start in done and wanted <= set(done[start][0]):
            piece = recorded_block(rows, *done[start])
        else:
            began = time.perf_counter()
            piece = measure(rows, episodes[start:start + journal.every])
            journal.put_piece(key, start, piece.accuracy, time.perf_counter() - began, cost=piece.cost)
        for name, accs in piece.accuracy.items():
            accuracy[name].extend(accs)
        for name, records in piece.cost.items():
            cost.setdefault(name, []).extend(records)
    block = Block(accuracy, cost)
    journal.put(key, block.accuracy, 0.0, cost=block.cost)
    return block
