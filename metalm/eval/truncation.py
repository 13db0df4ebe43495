"""Which scored rows of an evaluation were longer than its ``max_length``: their oldest demonstrations
(or, with none left, the prompt's oldest tokens) were cut before scoring (:func:`~metalm.eval.scoring.token_rows`).

A cut row is scored on less than the method was asked to see; the report counts them per row and task
(``truncated``) and `metalm eval` warns in one line, instead of a silent cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..data import Task
from ..data.demos import demonstrations, presented, with_demonstrations
from .rows import FinetuneChoice
from .scoring import token_rows


def truncation(harness: Any, tasks: Sequence[Task], finetune: FinetuneChoice | None = None
               ) -> dict[str, dict[str, dict[str, int]]]:
    """``{row: {task: {"cut": n, "rows": m}}}`` for a :class:`~metalm.eval.Harness`: of the ``m`` rows a
    row scores on a task's episodes (every shot count and seed; a calibrated row's content-free twins
    and a channel row's per-option rows included; a generation task's prompts), the ``n`` that
    ``harness.max_length`` cut. Only the tokenizer runs."""
    tok, limit = harness.tokenizer, harness.max_length
    rows = list(harness.rows(finetune).values())
    out: dict[str, dict[str, dict[str, int]]] = {}
    for task in tasks:
        counted: dict[tuple[bool, bool, bool], tuple[int, int]] = {}  # by presentation
        for shots in harness.config.shots:
            for seed in range(harness.config.seeds):
                episodes = harness.episodes(task, shots, seed)
                for how in {(r.presentation.demos, r.presentation.channel, r.presentation.calibrate) for r in rows}:
                    cut, n = _count(episodes, how, tok, limit, harness.config.max_new_tokens)
                    before = counted.get(how, (0, 0))
                    counted[how] = (before[0] + cut, before[1] + n)
        for row in rows:
            cut, n = counted[(row.presentation.demos, row.presentation.channel, row.presentation.calibrate)]
            out.setdefault(row.name, {})[task.name] = {"cut": cut, "rows": n}
    return out


def _count(episodes: Sequence[Any], how: tuple[bool, bool, bool], tok: Any, limit: int, new_tokens: int
           ) -> tuple[int, int]:
    demos, channel, calibrate = how
    if episodes[0].type == "generation":  # greedy_generate keeps the last limit - new_tokens prompt tokens
        prompts = [with_demonstrations(demonstrations(ep.support) if demos else "", q.prompt)
                   for ep in episodes for q in ep.query]
        return sum(len(tok(p)["input_ids"]) > limit - new_tokens for p in prompts), len(prompts)
    examples = [ex for ep in episodes for scored in presented(ep, demos=demos, channel=channel, calibrate=calibrate)
                for ex in scored]
    whole, kept = token_rows(examples, tok, 10**9), token_rows(examples, tok, limit)
    return sum(a != b for a, b in zip(whole, kept, strict=True)), len(examples)


def warning(counts: dict[str, dict[str, dict[str, int]]], limit: int) -> str | None:
    """One line saying how many rows were cut (``None`` when none was)."""
    cut = sum(v["cut"] for per_task in counts.values() for v in per_task.values())
    if not cut:
        return None
    total = sum(v["rows"] for per_task in counts.values() for v in per_task.values())
    worst = max(((row, task, v["cut"]) for row, per_task in counts.items() for task, v in per_task.items()),
                key=lambda x: x[2])
    return (f"metalm eval: warning: {cut} of {total} scored rows were longer than max_length={limit} tokens and lost "
            f"their oldest demonstrations or prompt tokens (most: {worst[0]} on {worst[1]}, {worst[2]}); the report's "
            "'truncated' counts them per row and task; leave max_length unset to fit what the shots need")
