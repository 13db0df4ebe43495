"""Learnability: how well the base model does a task once *trained on it* with plenty of data.

A benchmark of few-shot adaptation can only see adaptation on tasks the model can learn at all.
Before any method is compared, each task gets a ceiling: a task LoRA of the study's shape (the
model's adapter), trained from its standard initialization on up to ``train_examples`` examples
with Adam over minibatches, scored on disjoint examples (balanced over classes, so chance is
``1 / classes``) by the same rank classification (exact match for generation) as the harness; the
zero-shot score of the same examples is measured beside it. A task is learnable when its ceiling
clears chance by ``margin`` and its 95% Wilson interval lies above chance (:data:`CRITERION`, fixed
before any run).

Why a LoRA per task and not one multi-task run over the pool: a multi-task run's score on a task
depends on every other task in its pool (negative transfer, sampling temperature), so it bounds
the pool's learnability, not the task's; a per-task LoRA asks each task the question alone, at a
cost that grows linearly with the pool and resumes task by task.

The layers below the adapted ones are frozen, so each training minibatch runs them once
(:func:`metalm.losses.cache_prefix`) and every epoch after the first runs only the adapted layers.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..data import CollateConfig, EpisodeSampler, SamplerConfig, Task, collate
from ..data.demos import demonstrations, in_context
from ..data.episode import Example
from ..errors import ConfigError, TaskError
from ..losses import cache_prefix, lm_loss
from .prepared import prepare_queries, score_prepared
from .scoring import exact_match, greedy_generate, option_scores

HEADROOM = ("headroom: the better of zero-shot and plain in-context learning ({shots} demonstrations per class, "
            "from the training examples, before each test example) is at least {margin} below the ceiling")
CRITERION = ("learnable: ceiling >= chance + {margin} and the lower end of the ceiling's 95% Wilson "
             "interval > chance (ceiling: a task LoRA trained on up to {train} examples for {steps} Adam "
             "steps at lr {lr}, batch {batch}, scored on up to {test} disjoint class-balanced examples)")
#: Revision 2 of the criterion (written 2026-12-06, after 69 of the pool's 115 rows by :data:`CRITERION`
#: showed a ceiling too weak for the split's 30 tasks, and before any row by this one): the same
#: question, with the ceiling's budget chosen on held-out training examples instead of fixed.
SELECTED = ("learnable: ceiling >= chance + {margin} and the lower end of the ceiling's 95% Wilson "
            "interval > chance (ceiling: a task LoRA trained on up to {train} examples less a {dev} "
            "development part, with Adam at each lr of ({lrs}), batch {batch}, checkpoints after ({steps}) steps; "
            "the checkpoint best on the development part (ties: fewer steps, then the smaller lr) scored on "
            "up to {test} disjoint class-balanced examples)")


#: The settings of :data:`SELECTED` used for the pool (``learnability.py --revision 2``).
REVISION_2: dict[str, Any] = {"select_steps": (32, 64, 128), "select_lrs": (1e-3, 3e-3)}


@dataclasses.dataclass
class CeilingConfig:
    """How a task's ceiling is measured.

    Attributes:
        train_examples: Most training examples (class-balanced for classification).
        test_examples: Most scored examples, disjoint from the training ones (at most half the task).
        steps: Adam steps over minibatches of the training examples.
        batch_size: Training examples per step.
        lr: Adam's learning rate.
        max_length: Most tokens per row.
        margin: How far above chance a learnable task's ceiling must be.
        seed: Seed of the examples drawn and of the minibatch order.
        icl_shots: Demonstrations per class (per task for multiple choice) of the in-context score.
        headroom: How far below the ceiling the better of zero-shot and in-context learning must be
            for a task to have room for adaptation (:data:`HEADROOM`): a task solved without adapting
            cannot show adaptation.
        select_steps: When given (with ``select_lrs``), the ceiling is :data:`SELECTED`: these
            checkpoints of each lr's run are candidates (``steps`` and ``lr`` are then unused).
        select_lrs: The learning rates of :data:`SELECTED`.
        dev_fraction: The part of each class's training examples that chooses the candidate.
    """

    train_examples: int = 256
    test_examples: int = 60
    steps: int = 32
    batch_size: int = 16
    lr: float = 3e-3
    max_length: int = 256
    margin: float = 0.10
    seed: int = 0
    icl_shots: int = 4
    headroom: float = 0.10
    select_steps: tuple[int, ...] = ()
    select_lrs: tuple[float, ...] = ()
    dev_fraction: float = 0.25

    def __post_init__(self) -> None:
        for key in ("train_examples", "test_examples", "steps", "batch_size", "max_length"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError("lr", f"must be finite and > 0, got {self.lr}")
        if not 0 <= self.margin < 1:
            raise ConfigError("margin", f"must be in [0, 1), got {self.margin}")
        self.select_steps, self.select_lrs = tuple(self.select_steps), tuple(self.select_lrs)
        if bool(self.select_steps) != bool(self.select_lrs):
            raise ConfigError("select_steps", "select_steps and select_lrs are given together or not at all")
        if any(s < 1 for s in self.select_steps) or any(not (lr > 0 and math.isfinite(lr)) for lr in self.select_lrs):
            raise ConfigError("select_steps", f"steps must be >= 1 and lrs finite and > 0, got "
                                              f"{self.select_steps} / {self.select_lrs}")
        if self.select_steps and not 0 < self.dev_fraction < 1:
            raise ConfigError("dev_fraction", f"must be in (0, 1), got {self.dev_fraction}")

    @property
    def selected(self) -> bool:
        """Whether the ceiling's budget is chosen on a development part of the training examples."""
        return bool(self.select_steps)

    def criterion(self) -> str:
        if self.selected:
            return SELECTED.format(margin=self.margin, train=self.train_examples, dev=self.dev_fraction,
                                   lrs=", ".join(map(str, self.select_lrs)),
                                   steps=", ".join(map(str, self.select_steps)), batch=self.batch_size,
                                   test=self.test_examples)
        return CRITERION.format(margin=self.margin, train=self.train_examples, steps=self.steps, lr=self.lr,
                                batch=self.batch_size, test=self.test_examples)

    def headroom_rule(self) -> str:
        return HEADROOM.format(shots=self.icl_shots, margin=self.headroom)


def split_examples(task: Task, cfg: CeilingConfig) -> tuple[list[Example], list[Example]]:
    """Disjoint training and test examples of ``task`` (one episode of the task's own sampler).

    Classification takes every class with enough examples, the same number of test examples from
    each (so chance is ``1 / classes``) and up to ``train_examples / classes`` training ones each.
    """
    if task.spec.type == "classification":
        counts = {k: v for k, v in task.class_counts().items() if v >= 2}
        if len(counts) < 2:
            raise TaskError("sampler", f"task {task.name!r} has fewer than 2 classes with 2 examples", task.path)
        smallest = min(counts.values())
        queries = max(1, min(math.ceil(cfg.test_examples / len(counts)), smallest // 2))
        shots = max(1, min(cfg.train_examples // len(counts), smallest - queries))
        sampler_cfg = SamplerConfig(ways=len(counts), shots=shots, queries=queries, drop_small_classes=True)
    elif task.spec.type in ("multiple_choice", "generation"):
        size = len(task)
        queries = max(1, min(cfg.test_examples, size // 2))
        sampler_cfg = SamplerConfig(ways=2, shots=max(1, min(cfg.train_examples, size - queries)), queries=queries)
    else:
        raise ConfigError("task", f"{task.name!r} is a {task.spec.type} task: learnability needs answers to score")
    episode = EpisodeSampler([task], sampler_cfg, seed=cfg.seed).sample()
    return list(episode.support), list(episode.query)


def chance(task_type: str, test: Sequence[Example]) -> float:
    """Expected accuracy of a uniform guess over each example's options (0 for generation)."""
    if task_type == "generation":
        return 0.0
    return sum(1 / len(ex.options) for ex in test) / len(test)


def _minibatches(model: nn.Module, train: Sequence[Example], tokenizer, cfg: CeilingConfig,  # noqa: ANN001
                 layer: int | None, gen: torch.Generator) -> list[dict[str, Tensor]]:
    """``train`` in shuffled minibatches, the frozen layers below ``layer`` run once (:func:`cache_prefix`)."""
    order = torch.randperm(len(train), generator=gen).tolist()
    collate_cfg = CollateConfig(max_length=cfg.max_length)
    device = next(model.parameters()).device
    batches = []
    for start in range(0, len(order), cfg.batch_size):
        batch = collate([train[i] for i in order[start:start + cfg.batch_size]], tokenizer, collate_cfg)
        batches.append(cache_prefix(model, {k: v.to(device) for k, v in batch.items()}, layer))
    return batches


def _fit(model: nn.Module, init: Mapping[str, Tensor], batches: list[dict[str, Tensor]], lr: float,
         keep: Sequence[int], gen: torch.Generator) -> list[dict[str, Tensor]]:
    """Adam from ``init`` over ``batches`` (a new order of them each epoch); the weights after each of
    ``keep`` steps (ascending)."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in init.items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    kept = []
    for step in range(max(keep)):
        if step and step % len(batches) == 0:  # a new epoch: a new order of the same minibatches
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        opt.zero_grad(set_to_none=True)
        lm_loss(model, params, batches[step % len(batches)]).backward()
        opt.step()
        if step + 1 in keep:
            kept.append({k: v.detach().clone() for k, v in params.items()})
    return kept


def train_lora(model: nn.Module, init: Mapping[str, Tensor], train: Sequence[Example], tokenizer,  # noqa: ANN001
               cfg: CeilingConfig, layer: int | None) -> dict[str, Tensor]:
    """Fast weights trained on ``train`` with Adam (``cfg.steps`` steps at ``cfg.lr`` over shuffled minibatches).

    Args:
        init: The fast weights' initialization (not modified).
        layer: The lowest adapted decoder layer: the layers below it run once per minibatch.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    return _fit(model, init, _minibatches(model, train, tokenizer, cfg, layer, gen), cfg.lr, [cfg.steps], gen)[0]


def dev_part(train: Sequence[Example], fraction: float, task_type: str) -> tuple[list[Example], list[Example]]:
    """``train`` split into a fitting and a development part (``fraction`` of each class, at least one,
    for classification; of the whole for other types), each in its original order."""
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(train):
        groups.setdefault(ex.answer if task_type == "classification" else "", []).append(i)
    dev = {i for idx in groups.values() for i in idx[:max(1, round(len(idx) * fraction))] if len(idx) > 1}
    return [ex for i, ex in enumerate(train) if i not in dev], [ex for i, ex in enumerate(train) if i in dev]


def selected_lora(model: nn.Module, init: Mapping[str, Tensor], train: Sequence[Example], tokenizer,  # noqa: ANN001
                  cfg: CeilingConfig, layer: int | None, task_type: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The ceiling of :data:`SELECTED`: one LoRA per lr of ``cfg.select_lrs`` fitted on ``train`` less its
    development part, the checkpoint best on that part. Returns the weights and ``{"lr", "steps", "dev"}``
    (``dev``: every candidate's development accuracy, ``"lr@steps"``)."""
    fit, dev = dev_part(train, cfg.dev_fraction, task_type)
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = _minibatches(model, fit, tokenizer, cfg, layer, gen)
    state = gen.get_state()
    steps = sorted(set(cfg.select_steps))
    candidates = [((lr, s), p) for lr in cfg.select_lrs
                  for s, p in zip(steps, _fit(model, init, batches, lr, steps, torch.Generator().set_state(state)),
                                  strict=True)]
    scores = hits(model, [p for _, p in candidates], dev, tokenizer, task_type, cfg, layer)
    accs = [sum(h) / len(h) for h in scores]
    best = max(range(len(candidates)), key=lambda i: (accs[i], -candidates[i][0][1], -candidates[i][0][0]))
    (lr, s), params = candidates[best]
    return params, {"lr": lr, "steps": s, "dev": {f"{c[0][0]}@{c[0][1]}": round(a, 4)
                                                   for c, a in zip(candidates, accs, strict=True)}}


def _argmax_hits(scores: Sequence[Sequence[float]], test: Sequence[Example]) -> list[float]:
    return [float(max(range(len(s)), key=s.__getitem__) == ex.label) for s, ex in zip(scores, test, strict=True)]


@torch.no_grad()
def _generation_hits(model: nn.Module, params: Mapping[str, Tensor], test: Sequence[Example], tokenizer,  # noqa: ANN001
                     cfg: CeilingConfig) -> list[float]:
    preds = greedy_generate(model, params, [ex.prompt for ex in test], tokenizer, max_length=cfg.max_length)
    return [exact_match(p, ex.references or [ex.answer]) for p, ex in zip(preds, test, strict=True)]


@torch.no_grad()
def hits(model: nn.Module, params: Sequence[Mapping[str, Tensor]], test: Sequence[Example], tokenizer,  # noqa: ANN001
         task_type: str, cfg: CeilingConfig, layer: int | None) -> list[list[float]]:
    """Per-example accuracy (rank classification) or exact match (generation) of each of ``params``.

    Rank classification runs the frozen layers below ``layer`` once for every set of weights
    (:func:`metalm.eval.prepared.prepare_queries`).
    """
    if task_type == "generation":
        return [_generation_hits(model, p, test, tokenizer, cfg) for p in params]
    first, prepared = prepare_queries(model, params[0], test, tokenizer, CollateConfig(max_length=cfg.max_length),
                                      layer)
    out = [_argmax_hits(first, test)]
    for p in params[1:]:
        scores = score_prepared(model, p, prepared) if prepared is not None else None
        out.append(_argmax_hits(scores, test) if scores is not None else
                   hits(model, [p], test, tokenizer, task_type, cfg, layer)[0])
    return out


def icl_hits(model: nn.Module, params: Mapping[str, Tensor], train: Sequence[Example], test: Sequence[Example],
             tokenizer, cfg: CeilingConfig, task_type: str) -> list[float]:  # noqa: ANN001
    """Per-example accuracy of plain in-context learning: every test example after the same
    demonstrations (the first ``cfg.icl_shots`` training examples of each class, or of the task for
    multiple choice, in a seeded order), scored as the harness's ``icl`` row scores, never cut below
    the model's window."""
    by_class: dict[str, list[Example]] = {}
    for ex in train:
        by_class.setdefault(ex.answer if task_type == "classification" else "", []).append(ex)
    shown = [ex for group in by_class.values() for ex in group[:cfg.icl_shots]]
    random.Random(cfg.seed).shuffle(shown)
    demos = demonstrations(shown)
    window = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 2048)
    scores = option_scores(model, params, [in_context(demos, ex) for ex in test], tokenizer,
                           CollateConfig(max_length=int(window)), batch_size=cfg.batch_size)
    return _argmax_hits(scores, test)


def has_headroom(zeroshot: float, icl: float | None, ceiling: float, margin: float) -> bool:
    """:data:`HEADROOM`: the better of zero-shot and in-context learning at least ``margin`` below the ceiling."""
    return max(zeroshot, icl if icl is not None else zeroshot) <= ceiling - margin


def wilson(successes: float, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (Wilson 1927)."""
    z = statistics.NormalDist().inv_cdf(0.975)
    if n < 1:
        raise ValueError("wilson: n must be >= 1")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def verdict(chance_level: float, ceiling_hits: Sequence[float], margin: float) -> tuple[tuple[float, float], bool]:
    """The ceiling's 95% interval and whether the task is learnable by :data:`CRITERION`."""
    n = len(ceiling_hits)
    ceiling = sum(ceiling_hits) / n
    ci = wilson(sum(ceiling_hits), n)
    return ci, ceiling >= chance_level + margin and ci[0] > chance_level


def measure_task(model: nn.Module, init: Mapping[str, Tensor], task: Task, tokenizer,  # noqa: ANN001
                 cfg: CeilingConfig, layer: int | None, known: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One task's row of a learnability file: chance, zero-shot, plain in-context learning (option-scored
    tasks), ceiling, its interval, n, learnable, headroom (and the chosen budget by :data:`SELECTED`).

    Args:
        known: An earlier row of the same task and examples (same seed and sizes, e.g. by another
            criterion): its in-context score is reused when its zero-shot score is measured again
            to the digit (the check that the examples are the same); otherwise it is measured.
    """
    train, test = split_examples(task, cfg)
    chosen = None
    if cfg.selected:
        trained, chosen = selected_lora(model, init, train, tokenizer, cfg, layer, task.spec.type)
    else:
        trained = train_lora(model, init, train, tokenizer, cfg, layer)
    base, top = hits(model, [init, trained], test, tokenizer, task.spec.type, cfg, layer)
    zeroshot, ceiling = sum(base) / len(base), sum(top) / len(top)
    if task.spec.type == "generation":
        icl_score = None
    elif known is not None and known.get("icl") is not None and known.get("zeroshot") == round(zeroshot, 4):
        icl_score = known["icl"]
    else:
        icl = icl_hits(model, init, train, test, tokenizer, cfg, task.spec.type)
        icl_score = sum(icl) / len(icl)
    level = chance(task.spec.type, test)
    ci, ok = verdict(level, top, cfg.margin)
    row = {"type": task.spec.type, "chance": round(level, 4), "zeroshot": round(zeroshot, 4),
           "icl": round(icl_score, 4) if icl_score is not None else None,
           "ceiling": round(ceiling, 4), "ci95": [round(ci[0], 4), round(ci[1], 4)],
           "n": len(test), "train": len(train), "learnable": ok,
           "headroom": has_headroom(zeroshot, icl_score, ceiling, cfg.headroom)}
    return row if chosen is None else {**row, "chosen": chosen}
