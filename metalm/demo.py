"""A small end-to-end meta-learning run on synthetic tasks (the package's runnable example).

It meta-trains a tiny randomly initialized model on the key -> label task family
(:class:`metalm.data.SyntheticTasks`) and reports few-shot accuracy on held-out episodes (tasks
drawn from a separate seed) before and after meta-training, each adapted by the same inner loop.
It needs no download and runs in under a minute on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

import torch

from .algorithms import MetaLearner, build_algorithm
from .config import AdapterConfig, InnerConfig, MetaConfig, to_dict
from .data.synthetic import SyntheticTasks
from .errors import ConfigError
from .eval.inits import init_of, query_metrics
from .models import apply_adapter, load_model, tiny_config
from .params import select_parameters


@dataclasses.dataclass
class DemoConfig:
    """Settings of :func:`run_demo`.

    Attributes:
        algorithm: A registered algorithm name.
        arch: ``gpt2`` or ``llama`` (tiny, random).
        outer_steps: Outer (meta) steps.
        meta_batch: Episodes per outer step.
        ways: Classes per task (N).
        shots: Support examples per class (K).
        queries: Query examples per class.
        eval_episodes: Held-out episodes scored before and after.
        outer_lr: AdamW learning rate of the outer loop.
        shared: Base weights the outer loop also learns (``MetaConfig.shared``).
        inner: Inner-loop settings.
        seed: Seed of the model, the training episodes and (plus one) the held-out episodes.
    """

    algorithm: str = "maml"
    arch: Literal["gpt2", "llama"] = "gpt2"
    outer_steps: int = 150
    meta_batch: int = 4
    ways: int = 3
    shots: int = 4
    queries: int = 4
    eval_episodes: int = 40
    outer_lr: float = 3e-3
    shared: str = "none"
    inner: InnerConfig = dataclasses.field(default_factory=lambda: InnerConfig(steps=3, lr=0.3))
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("outer_steps", "meta_batch", "ways", "shots", "queries", "eval_episodes"):
            if not 1 <= getattr(self, key) <= 100_000:
                raise ConfigError(key, f"must be in 1..100000, got {getattr(self, key)}")
        if self.outer_lr <= 0:
            raise ConfigError("outer_lr", f"must be > 0, got {self.outer_lr}")
        if self.seed < 0:
            raise ConfigError("seed", f"must be >= 0, got {self.seed}")


def _evaluate(algo: MetaLearner, tasks: SyntheticTasks, cfg: DemoConfig) -> float:
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    init = init_of(algo)
    scores = [query_metrics(algo.model, init, tasks.episode(cfg.shots, cfg.queries, gen), algo.prefix_layer)
              ["query_accuracy"] for _ in range(cfg.eval_episodes)]
    return sum(scores) / len(scores)


def run_demo(cfg: DemoConfig, log: bool = True) -> dict[str, float]:
    """Meta-train on synthetic tasks and return held-out accuracy before and after (and the time)."""
    torch.manual_seed(cfg.seed)
    model = load_model(tiny_config(cfg.arch, vocab_size=96, n_embd=64, n_layer=4)
                       if cfg.arch == "gpt2" else tiny_config("llama", vocab_size=96, hidden_size=64), seed=cfg.seed)
    adapter = AdapterConfig(rank=4, alpha=8.0)
    model = apply_adapter(model, adapter)
    selection = select_parameters(model, adapter, MetaConfig(shared=cfg.shared))
    algo = build_algorithm(cfg.algorithm, model, selection, {"inner": to_dict(cfg.inner)})
    optimizer = torch.optim.AdamW(algo.meta_parameters().values(), lr=cfg.outer_lr, weight_decay=0.0)
    tasks = SyntheticTasks(96, n_classes=cfg.ways, seq_len=6, key_pool=8, label_pool=8)
    before = _evaluate(algo, tasks, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    for step in range(cfg.outer_steps):
        metrics = algo.step(tasks.episodes(cfg.meta_batch, cfg.shots, cfg.queries, gen), optimizer)
        if log and (step + 1) % max(1, cfg.outer_steps // 10) == 0:
            print(f"step {step + 1:4d}  query loss {metrics['query_loss']:.3f}  "
                  f"query acc {metrics['query_accuracy']:.3f}", flush=True)
    seconds = time.perf_counter() - start
    after = _evaluate(algo, tasks, cfg)
    return {"accuracy_before": before, "accuracy_after": after, "chance": 1.0 / cfg.ways, "train_seconds": seconds}
