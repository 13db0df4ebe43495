"""Few-shot evaluation on held-out tasks: every method on the same episodes (paired comparisons).

For each task and shot count, ``episodes`` episodes are drawn from a seed fixed by the task name,
the shot count and the evaluation seed, so every method sees exactly the same support and query
examples. Methods:

* ``zeroshot``: the pretrained model (standard adapter initialization, i.e. LoRA's zero update);
* ``icl``: the pretrained model with the K support examples as demonstrations in the prompt
  (the oldest demonstrations are truncated first when the context is full);
* ``finetune``: the inner loop from the standard initialization, with the meta-learner's inner
  budget; its learning rate is chosen on meta-val tasks, never on the held-out ones;
* ``meta``: the run's meta-learned initialization (and learned rates, shared weights) adapted by
  the same inner loop;
* ``mtl``: the same for a run trained with ``algorithm: multitask``
  (:mod:`metalm.algorithms.multitask`): the multi-task initialization adapted by the inner loop.

Classification and multiple choice are scored by rank classification, generation by exact match
(token F1 reported too). Accuracy is averaged over an episode's queries; each task gets the mean
and a 95% t-interval over episodes, and the macro mean is taken over tasks per episode index.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from ..algorithms import MetaLearner
from ..config import InnerConfig
from ..data import CollateConfig, EpisodeSampler, SamplerConfig, Task, TaskRegistry, collate
from ..data.episode import Example, TextEpisode
from ..distributed import current, map_sharded
from ..errors import ConfigError, TaskError
from ..inner import adapt
from .scoring import exact_match, greedy_generate, option_scores, token_f1

METHODS = ("zeroshot", "icl", "finetune", "meta", "mtl")
TRAINED = ("meta", "mtl")  # methods that start from a run's trained weights
# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom; 1.96 beyond.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, (_T975[n - 2] if n - 1 <= 30 else 1.96) * sd / math.sqrt(n)


@dataclasses.dataclass
class EvalConfig:
    """Settings of :func:`evaluate`.

    Attributes:
        shots: Shot counts K to evaluate.
        episodes: Episodes per task and shot count.
        ways: Classes per classification episode.
        queries: Query examples per class (classification) or per episode.
        methods: Methods to compare (see the module doc).
        seed: Seed of the evaluation episodes.
        finetune_lrs: Candidate inner learning rates for ``finetune`` (chosen on meta-val tasks).
        finetune_steps: Candidate inner step counts for ``finetune`` (default: the meta-learner's
            budget only, so both use the same number of steps).
        val_episodes: Episodes per meta-val task for that choice.
        inner_steps: Also evaluate ``finetune`` and ``meta``/``mtl`` at these inner step counts (first shot
            count only), for the accuracy-vs-inner-steps curve; ``None``: off.
        max_length: Most tokens per scored row (demonstrations included).
        max_new_tokens: Longest generated answer.
        batch_size: Rows per scoring forward pass.
    """

    shots: list[int] = dataclasses.field(default_factory=lambda: [4])
    episodes: int = 4
    ways: int = 5
    queries: int = 2
    methods: list[str] = dataclasses.field(default_factory=lambda: ["zeroshot", "icl", "finetune", "meta"])
    seed: int = 1234
    finetune_lrs: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0])
    finetune_steps: list[int] | None = None
    val_episodes: int = 2
    inner_steps: list[int] | None = None
    max_length: int = 256
    max_new_tokens: int = 12
    batch_size: int = 16

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError("methods", f"unknown method {unknown[0]!r} (known: {', '.join(METHODS)})")
        if not self.shots or min(self.shots) < 1:
            raise ConfigError("shots", "needs shot counts >= 1")
        if self.episodes < 1:
            raise ConfigError("episodes", "must be >= 1")


@contextlib.contextmanager
def swapped(params: Mapping[str, Tensor], values: Mapping[str, Tensor]) -> Iterator[None]:
    """Temporarily copy ``values`` into the tensors ``params`` (same names); restore them afterwards."""
    saved = {k: params[k].detach().clone() for k in values}
    with torch.no_grad():
        for k, v in values.items():
            params[k].copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                params[k].copy_(v)


class Harness:
    """Runs the methods on shared episodes.

    Args:
        algorithm: A meta-learner whose model holds the adapter (its selection, inner config and,
            for ``meta``, its learned state are used).
        tokenizer: The model's tokenizer.
        base: Meta-parameter values of the pretrained model with the standard adapter init.
        trained: Meta-parameter values after training (``None``: no ``meta``/``mtl`` method).
        config: Evaluation settings.
    """

    def __init__(self, algorithm: MetaLearner, tokenizer, base: Mapping[str, Tensor],  # noqa: ANN001
                 trained: Mapping[str, Tensor] | None, config: EvalConfig) -> None:
        needs_run = [m for m in config.methods if m in TRAINED]
        if needs_run and trained is None:
            raise ConfigError("methods", f"{needs_run[0]} needs a trained run (--run-dir)")
        self.algo, self.tokenizer, self.base, self.trained, self.config = algorithm, tokenizer, base, trained, config
        self.model = algorithm.model
        # Never longer than the model's position table (GPT-2 style models index it directly).
        limit = getattr(self.model.config, "max_position_embeddings", None) or \
            getattr(self.model.config, "n_positions", None) or config.max_length
        self.max_length = min(config.max_length, int(limit))
        self.collate = CollateConfig(max_length=self.max_length)
        self.inner: InnerConfig = algorithm.inner
        self._episodes: dict[tuple[str, int], list[TextEpisode]] = {}
        self.finetune_lr: float | None = None
        self.finetune_steps: int | None = None

    def episodes(self, task: Task, shots: int, n: int | None = None, salt: int = 0) -> list[TextEpisode]:
        """The fixed evaluation episodes of ``task`` at ``shots`` (the same for every method)."""
        n = n or self.config.episodes
        key = (task.name, shots, salt, n)
        if key not in self._episodes:
            seed = zlib.crc32(f"{task.name}/{shots}/{self.config.seed}/{salt}".encode())
            cfg = SamplerConfig(ways=self.config.ways, shots=shots, queries=self.config.queries,
                                drop_small_classes=True)
            sampler = EpisodeSampler([task], cfg, seed=seed)
            self._episodes[key] = [sampler.sample() for _ in range(n)]
        return self._episodes[key]

    def _fast(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in self.algo.selection.fast_params(self.model).items()}

    def _score(self, params: Mapping[str, Tensor], episode: TextEpisode, queries: list[Example]) -> dict[str, float]:
        if episode.type == "generation":
            preds = greedy_generate(self.model, params, [q.prompt for q in queries], self.tokenizer,
                                    max_length=self.max_length, max_new_tokens=self.config.max_new_tokens)
            em = [exact_match(p, q.references) for p, q in zip(preds, queries, strict=True)]
            f1 = [token_f1(p, q.references) for p, q in zip(preds, queries, strict=True)]
            return {"accuracy": sum(em) / len(em), "f1": sum(f1) / len(f1)}
        scores = option_scores(self.model, params, queries, self.tokenizer, self.collate,
                               batch_size=self.config.batch_size)
        hits = [max(range(len(s)), key=s.__getitem__) == q.label for s, q in zip(scores, queries, strict=True)]
        return {"accuracy": sum(hits) / len(hits)}

    def _support(self, episode: TextEpisode) -> dict[str, Tensor]:
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in collate(episode.support, self.tokenizer, self.collate).items()}

    def run_episode(self, method: str, episode: TextEpisode, steps: int | None = None) -> dict[str, float]:
        """Adapt (or not) with ``method`` on the support set and score the queries.

        ``steps`` overrides the inner step count of ``finetune``, ``meta`` and ``mtl``.
        """
        if method == "zeroshot":
            return self._score(self._fast(), episode, episode.query)
        if method == "icl":
            demos = "\n\n".join(ex.prompt + ex.answer for ex in episode.support)
            queries = [dataclasses.replace(q, prompt=f"{demos}\n\n{q.prompt}") for q in episode.query]
            return self._score(self._fast(), episode, queries)
        if method == "finetune":
            lr = self.finetune_lr if self.finetune_lr is not None else self.inner.lr
            options = {**self.inner.options(), "steps": steps or self.finetune_steps or self.inner.steps}
            support = self.algo.prefixed(self._support(episode), options["steps"])
            params = adapt(self.model, self._fast(), support, lr=lr, first_order=True, **options)
            return self._score({k: v.detach() for k, v in params.items()}, episode, episode.query)
        return self._score(self.algo.adapt(self._support(episode), steps=steps), episode, episode.query)

    def choose_finetune(self, val_tasks: list[Task]) -> tuple[float, int]:
        """Pick ``finetune``'s inner learning rate and step count by mean accuracy on meta-val episodes."""
        shots = self.config.shots[0]
        grid = [(lr, steps) for steps in (self.config.finetune_steps or [self.inner.steps])
                for lr in self.config.finetune_lrs]
        best, best_acc = grid[0], -1.0
        with swapped(self.algo.meta_parameters(), self.base):
            for lr, steps in grid:
                self.finetune_lr, self.finetune_steps = lr, steps
                eps = [ep for task in val_tasks for ep in self.episodes(task, shots, self.config.val_episodes, salt=1)]
                accs = map_sharded(eps, lambda ep: self.run_episode("finetune", ep)["accuracy"])
                acc = sum(accs) / len(accs)
                if acc > best_acc:
                    best, best_acc = (lr, steps), acc
        self.finetune_lr, self.finetune_steps = best
        return best

    def inner_steps_sweep(self, tasks: list[Task]) -> list[dict[str, Any]]:
        """Macro accuracy of ``finetune`` and ``meta``/``mtl`` at each of ``config.inner_steps`` (first shot count)."""
        shots, out = self.config.shots[0], []
        for method in [m for m in ("finetune", *TRAINED) if m in self.config.methods]:
            with swapped(self.algo.meta_parameters(), self.trained if method in TRAINED else self.base):
                for steps in self.config.inner_steps or []:
                    items = [(i, ep) for i, t in enumerate(tasks) for ep in self.episodes(t, shots)]
                    flat = map_sharded(items, lambda x, m=method, k=steps: self.run_episode(m, x[1], k)["accuracy"])
                    accs = [[a for (i, _), a in zip(items, flat, strict=True) if i == j] for j in range(len(tasks))]
                    mean, ci = mean_ci95([sum(a[e] for a in accs) / len(tasks) for e in range(len(accs[0]))])
                    out.append({"method": method, "shots": shots, "inner_steps": steps, "accuracy": mean, "ci95": ci})
        return out

    def run(self, tasks: list[Task], progress: bool = False) -> dict[str, Any]:
        """Evaluate every method on every task and shot count; returns the JSON-ready results.

        Under ``torchrun`` the episodes are dealt over the processes and gathered, so every process
        returns the same results as one process would.
        """
        from tqdm.auto import tqdm

        per_episode: dict[tuple[str, str, int], list[float]] = {}
        chance: dict[str, float] = {}
        ctx = current()
        items = [(t, k, e) for t in tasks for k in self.config.shots for e in range(self.config.episodes)]
        bar = tqdm(total=len(self.config.methods) * len(items), disable=not progress or not ctx.is_main,
                   desc="evaluate")

        def score(method: str, item: tuple[Task, int, int]) -> float:
            task, shots, e = item
            acc = self.run_episode(method, self.episodes(task, shots)[e])["accuracy"]
            bar.update(ctx.world_size)
            return acc

        for method in self.config.methods:
            values = self.trained if method in TRAINED else self.base
            with swapped(self.algo.meta_parameters(), values):
                accs = map_sharded(items, lambda x, m=method: score(m, x), ctx)
            for (task, shots, _), acc in zip(items, accs, strict=True):
                per_episode.setdefault((method, task.name, shots), []).append(acc)
        for task in tasks:
            for shots in self.config.shots:
                q = self.episodes(task, shots)[0].query
                chance[task.name] = (sum(1 / len(x.options) for x in q) / len(q)) if q[0].options else 0.0
        bar.close()
        results, macro = [], []
        for (method, task, shots), accs in per_episode.items():
            mean, ci = mean_ci95(accs)
            results.append({"method": method, "task": task, "shots": shots, "accuracy": mean, "ci95": ci,
                            "episodes": len(accs)})
        for method in self.config.methods:
            for shots in self.config.shots:
                by_episode = [sum(per_episode[(method, t.name, shots)][e] for t in tasks) / len(tasks)
                              for e in range(self.config.episodes)]
                mean, ci = mean_ci95(by_episode)
                macro.append({"method": method, "shots": shots, "accuracy": mean, "ci95": ci})
        report = {"results": results, "macro": macro, "chance": chance,
                  "macro_chance": sum(chance.values()) / len(chance), "finetune_lr": self.finetune_lr,
                  "finetune_steps": self.finetune_steps, "inner_steps": self.inner.steps}
        if self.config.inner_steps:
            report["inner_steps_sweep"] = self.inner_steps_sweep(tasks)
        return report


def eval_tasks(registry: TaskRegistry, names: list[str]) -> list[Task]:
    """Tasks to evaluate; language-modeling tasks have no accuracy and are refused."""
    tasks = [registry[n] for n in names]
    lm = [t.name for t in tasks if t.spec.type == "language_modeling"]
    if lm:
        raise TaskError("tasks", f"{lm[0]!r} is a language-modeling task: few-shot accuracy does not apply")
    return tasks


def format_table(report: dict[str, Any]) -> str:
    """A markdown table: macro accuracy ± 95% CI per method and shot count, with chance."""
    shots = sorted({r["shots"] for r in report["macro"]})
    lines = ["| method | " + " | ".join(f"{k}-shot" for k in shots) + " |",
             "|---|" + "---|" * len(shots)]
    for method in dict.fromkeys(r["method"] for r in report["macro"]):
        cells = [next(f"{r['accuracy']:.3f} ± {r['ci95']:.3f}" for r in report["macro"]
                      if r["method"] == method and r["shots"] == k) for k in shots]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("| chance | " + " | ".join(f"{report['macro_chance']:.3f}" for _ in shots) + " |")
    return "\n".join(lines)
