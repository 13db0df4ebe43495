"""A journal of measured blocks, so that a killed ``metalm eval`` resumes where it stopped.

Each block of episodes (task, shot count, seed) is appended to a JSONL file as soon as it is
measured, with fine-tuning's chosen budget; ``metalm eval --resume`` reads them back and measures
only the rest. The first line holds a fingerprint of everything the figures depend on (evaluation
settings, runs and their checkpoints): a journal of another evaluation is refused, never mixed in.
A line cut short by a kill is dropped. Each line records the seconds it took, so an evaluation
resumed over several sessions still reports its whole measuring time. The journal is deleted once
the report is written.

A block can also be journaled in pieces of ``every`` episodes (``metalm eval --journal-every N``): a
block of long episodes (an hour or more on a CPU) then loses at most one piece to a kill. A block
measured in pieces holds the same per-episode values as one measured whole (each episode's figures
depend on it alone; up to float rounding where the unadapted rows of several episodes are scored in
one batch).

What a new task costs each row alone (``EvalConfig.cost_episodes``) is journaled too, one line per
task and shot count, its seconds kept apart from the accuracies' measuring time.

An evaluation can be measured by several processes at once (``metalm eval --shard I/N``, e.g. one
thread each on a machine's cores): each writes a journal of its own beside the report's
(``OUT.partial.shard-I.jsonl``, :func:`journal_paths`) and reads every other one of the same
evaluation, so that no block is measured twice; the run without ``--shard`` that writes the report reads
them all and deletes them with its own.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..runtime.files import write_atomic


class Journal:
    """Measured blocks of one evaluation, kept in ``path``.

    Args:
        path: The JSONL file.
        fingerprint: What the figures depend on (a JSON-serializable value).
        resume: Read an existing journal (else start a new one).
        every: Episodes per journaled piece of a block (``None``: whole blocks).
        others: Journals of other processes measuring the same evaluation (``--shard``), read only; the
            ones that exist are read whatever ``resume`` says, and deleted by :meth:`close`.

    Raises:
        ConfigError: If a file read was written by another evaluation.
    """

    def __init__(self, path: str | Path, fingerprint: Any, resume: bool, every: int | None = None,
                 others: Sequence[str | Path] = ()) -> None:
        self.every = self.check_every(every)
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.others = [Path(o) for o in others if Path(o) != self.path]
        lines = _lines(self.path) if resume and self.path.is_file() else []
        read = [(self.path, lines), *((o, _lines(o)) for o in self.others if o.is_file())]
        for where, text in read:
            if text and text[0].get("fingerprint") != self.fingerprint:
                raise ConfigError("--resume", f"{where} was written by another evaluation (settings, runs or "
                                              "checkpoints differ); delete it or run without --resume")
        self._collect([line for _, text in read for line in text[1:]])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Rewritten whole (drops a torn last line), atomically: a kill or a full disk here keeps every block.
        write_atomic(self.path, "".join(json.dumps(line) + "\n" for line in [{"fingerprint": self.fingerprint},
                                                                             *lines[1:]]))

    def _collect(self, lines: list[dict[str, Any]]) -> None:
        self.blocks: dict[str, dict[str, list[float]]] = {}
        self.costs: dict[str, dict[str, list[list[float]]]] = {}  # block -> row -> [seconds, tokens] per adaptation
        self.pieces: dict[str, dict[int, tuple[dict[str, list[float]], dict[str, list[list[float]]]]]] = {}
        self.episode_costs: dict[str, dict[str, list[list[float]]]] = {}  # task/shots -> row -> [s, tokens] each
        self.finetune: dict[str, Any] | None = None
        self.seconds = 0.0  # measuring time recorded so far, earlier (resumed) sessions included
        self.cost_seconds = 0.0  # the same for the costs of rows alone (EvalConfig.cost_episodes)
        for line in lines:
            if "episode_cost" in line:
                self.episode_costs.setdefault(line["episode_cost"], {}).update(line["rows"])
                self.cost_seconds += float(line.get("seconds", 0.0))
                continue
            self.seconds += float(line.get("seconds", 0.0))
            if "block" in line:  # several lines of one block (several harnesses' rows) add up
                self.blocks.setdefault(line["block"], {}).update(line["rows"])
                self.costs.setdefault(line["block"], {}).update(line.get("cost", {}))  # none before 2026-12-04
            elif "piece" in line:  # episodes start.. of a block: (rows, costs)
                rows, costs = self.pieces.setdefault(line["piece"], {}).setdefault(int(line["start"]), ({}, {}))
                rows.update(line["rows"])
                costs.update(line.get("cost", {}))
            elif "finetune" in line:
                self.finetune = line["finetune"]

    @staticmethod
    def check_every(every: int | None) -> int | None:
        """``every`` (episodes per journaled piece, or ``None``: whole blocks), or a :class:`ConfigError`."""
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ConfigError("--journal-every", f"must be a whole number of episodes >= 1, got {every!r}")
        return every

    @classmethod
    def read(cls, path: str | Path, others: Sequence[str | Path] = ()) -> Journal:
        """The journal at ``path`` with ``others`` (other shards' journals, those that exist), read only
        (files untouched, whatever evaluation wrote them): e.g. one that a running evaluation is still
        writing."""
        journal = cls.__new__(cls)
        journal.path, journal.every = Path(path), None
        journal.others = [Path(o) for o in others if Path(o) != journal.path]
        # A shard's own file may not exist yet while the others' do; alone, a missing file is an error
        # (``_lines`` names it).
        lines = _lines(journal.path) if journal.path.is_file() or not journal.others else []
        journal.fingerprint = lines[0].get("fingerprint") if lines else None
        journal._collect([*lines[1:], *(line for o in journal.others if o.is_file() for line in _lines(o)[1:])])
        return journal

    @staticmethod
    def key(task: str, shots: int, seed: int) -> str:
        return f"{task}/{shots}/{seed}"

    def _append(self, line: dict[str, Any]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            err.filename = err.filename or str(self.path)  # a refused write names no file of its own
            raise

    def put(self, key: str, rows: dict[str, list[float]], seconds: float = 0.0,
            cost: dict[str, list[tuple[float, int]]] | None = None) -> None:
        """Record a measured block's rows (added to rows already recorded for it, e.g. by the harness
        of a run with another adapter on the same episodes), the seconds it took and its adapted rows'
        adaptation costs (``(seconds, forward tokens)`` per adaptation)."""
        cost = rounded_costs(cost)
        self.blocks.setdefault(key, {}).update(rows)
        self.costs.setdefault(key, {}).update(cost)
        self.seconds += seconds
        self._append({"block": key, "rows": rows, "cost": cost, "seconds": round(seconds, 3)})

    def put_piece(self, key: str, start: int, rows: dict[str, list[float]], seconds: float = 0.0,
                  cost: dict[str, list[tuple[float, int]]] | None = None) -> None:
        """Record episodes ``start..`` of block ``key`` (as :meth:`put` records a whole block); the block's
        own line follows once every piece is measured, with no seconds of its own."""
        cost = rounded_costs(cost)
        piece_rows, piece_costs = self.pieces.setdefault(key, {}).setdefault(start, ({}, {}))
        piece_rows.update(rows)
        piece_costs.update(cost)
        self.seconds += seconds
        self._append({"piece": key, "start": start, "rows": rows, "cost": cost, "seconds": round(seconds, 3)})

    def put_episode_cost(self, key: str, rows: dict[str, list[tuple[float, int]]], seconds: float = 0.0) -> None:
        """Record what the episodes of ``key`` (``task/shots``) cost each row alone (``(seconds, forward
        tokens)`` per episode: :func:`~metalm.eval.cost.episode_costs`) and the seconds measuring took
        (kept apart from the accuracies' measuring time)."""
        rows = rounded_costs(rows)
        self.episode_costs.setdefault(key, {}).update(rows)
        self.cost_seconds += seconds
        self._append({"episode_cost": key, "rows": rows, "seconds": round(seconds, 3)})

    def put_finetune(self, finetune: dict[str, Any], seconds: float = 0.0) -> None:
        """Record fine-tuning's chosen budget and its grid, and the seconds choosing it took."""
        self.finetune = finetune
        self.seconds += seconds
        self._append({"finetune": finetune, "seconds": round(seconds, 3)})

    def missing(self, keys: Sequence[str], rows: Sequence[str]) -> list[str]:
        """The blocks of ``keys`` that lack one of ``rows`` (not measured yet by any process)."""
        return [k for k in keys if not set(rows) <= set(self.blocks.get(k, {}))]

    def close(self) -> None:
        """Delete the journal and the other processes' journals it read (the report is written)."""
        for path in (self.path, *self.others):
            path.unlink(missing_ok=True)


def journal_paths(output: str | Path, shard: tuple[int, int] | None = None) -> tuple[Path, list[Path]]:
    """The journal an evaluation writing its report to ``output`` writes (shard ``I`` of ``N``:
    ``OUT.partial.shard-I.jsonl``; else ``OUT.partial.jsonl``) and the other journals of the same
    evaluation that exist (the unsharded one, every shard's), which it reads."""
    output = Path(output)
    main = output.with_name(output.name + ".partial.jsonl")
    own = output.with_name(f"{output.name}.partial.shard-{shard[0]}.jsonl") if shard else main
    found = sorted(output.parent.glob(f"{glob.escape(output.name)}.partial.shard-*.jsonl")) \
        if output.parent.is_dir() else []
    return own, [p for p in [main, *found] if p != own]


def rounded_costs(cost: dict[str, list[tuple[float, int]]] | None) -> dict[str, list[list[float]]]:
    """Costs as journal lines hold them: ``[seconds (4 decimals), forward tokens]``."""
    return {row: [[round(s, 4), int(t)] for s, t in records] for row, records in (cost or {}).items()}


def _lines(path: Path) -> list[dict[str, Any]]:
    """A journal's lines, up to the first cut short by a kill (it and anything after are measured again)."""
    out = []
    for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError:
            break
    return out
