"""In-context demonstrations: support examples written into a query's prompt.

One place builds every in-context prompt (evaluation's ``icl`` methods, their calibrated and
channel variants). Demonstrations keep the support set's order and are separated by a blank line;
when a prompt is longer than the context, scoring truncates it from the start, so the oldest
demonstrations go first and the query and its answer are never cut.

*Direct* prompts ask for the answer after the input (``P(y | demos, x)``); *channel* prompts put
the answer first and score the input (``P(x | demos, y)``, Min et al. 2022, "Noisy Channel Language
Model Prompting for Few-Shot Text Classification").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .episode import Example, TextEpisode

SEPARATOR = "\n\n"


def demonstrations(support: Sequence[Example], *, channel: bool = False) -> str:
    """The support examples as one demonstration block (empty for no support).

    Direct: ``prompt + answer`` per example; channel: ``answer`` (stripped), a newline, then ``prompt``.
    """
    if channel:
        return SEPARATOR.join(f"{ex.answer.strip()}\n{ex.prompt}" for ex in support)
    return SEPARATOR.join(ex.prompt + ex.answer for ex in support)


def with_demonstrations(demos: str, prompt: str) -> str:
    """``prompt`` after the demonstration block (``prompt`` itself when there is none)."""
    return f"{demos}{SEPARATOR}{prompt}" if demos else prompt


def in_context(demos: str, query: Example, prompt: str | None = None) -> Example:
    """``query`` (or its ``prompt`` replaced, e.g. by a content-free one) after the demonstrations,
    which go into ``Example.context`` so that scoring encodes them once for all the queries."""
    return dataclasses.replace(query, prompt=query.prompt if prompt is None else prompt,
                               context=demos + SEPARATOR if demos else "")


def channel_examples(demos: str, query: Example) -> list[Example]:
    """One example per option of ``query`` whose single "option" is the query's prompt.

    Scoring them with :func:`metalm.eval.option_scores` gives ``log P(prompt | demos, option)`` per
    option: the channel score. The prompt's tokens are the same for every option, so mean and sum
    normalization rank the options alike.
    """
    context = demos + SEPARATOR if demos else ""
    return [Example(option.strip() + "\n", query.prompt, [query.prompt], 0, context=context)
            for option in query.options]


def presented(episode: TextEpisode, *, demos: bool, channel: bool, calibrate: bool) -> list[list[Example]]:
    """The rows scored for each query of ``episode`` when it is presented after its support set as
    demonstrations (``demos``) or alone: one row per option by the channel (input given option), or
    the query and its content-free twins (``calibrate``: Zhao et al. 2021), or the query alone."""
    text = demonstrations(episode.support, channel=channel) if demos else ""
    if channel:
        return [channel_examples(text, q) for q in episode.query]
    if calibrate:
        return [[in_context(text, q), *(in_context(text, q, cf) for cf in q.content_free)] for q in episode.query]
    return [[in_context(text, q)] for q in episode.query]


def training_rows(episode: TextEpisode, *, channel: bool = False) -> list[Example]:
    """Each query of ``episode`` after its support set as demonstrations, its target the answer
    (direct) or the input given the answer (channel): the rows MetaICL trains on (Min et al. 2022)
    and the in-context queries of gradient + in-context adaptation. Evaluation scores the very same
    rows (:func:`in_context` and :func:`channel_examples` with :func:`demonstrations`)."""
    demos = demonstrations(episode.support, channel=channel)
    if not channel:
        return [in_context(demos, q) for q in episode.query]
    context = demos + SEPARATOR if demos else ""
    return [Example(q.answer.strip() + "\n", q.prompt, context=context) for q in episode.query]
