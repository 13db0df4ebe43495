"""The meta-training recipe: config in, checkpoints and metrics out.

``MetaTrainer`` draws meta-batches of episodes from a split's meta-train tasks, takes outer steps
with the configured algorithm (AdamW with schedule and clipping by default, gradient accumulation
over tasks), validates periodically on meta-val episodes, logs to ``log.jsonl`` (and TensorBoard
when installed), and checkpoints atomically so that ``resume=True`` continues a killed run to the
same final weights as an uninterrupted one (bit-identical on CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from . import distributed
from .algorithms import MetaLearner, algorithm_config, build_algorithm
from .checkpoint import (
    clean_partial,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import AdapterConfig, MetaConfig, deep_merge, from_dict, to_dict, yaml_load
from .data import (
    CollateConfig,
    EpisodeSampler,
    SamplerConfig,
    Task,
    TaskRegistry,
    load_split,
    packaged_tasks_dir,
    tensorize,
)
from .errors import ConfigError, MetalmError, NonFiniteError
from .hub import resolve_model
from .jsonl import trim_to_step, write_atomic
from .models import apply_adapter, load_model
from .params import select_parameters

MAX_EPISODES = 4096  # per outer step: each has its own episode stream, built up front


@dataclasses.dataclass
class OuterConfig:
    """The outer (meta) optimizer.

    Attributes:
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        schedule: ``constant``, ``linear`` (to 0) or ``cosine`` (to 0) after warm-up.
        warmup_steps: Linear warm-up steps.
        clip_grad_norm: Clip the meta-gradient's global norm (``None``: off).
        meta_batch: Episodes per outer step.
        accumulate: Meta-batches whose meta-gradients are averaged before a step.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    clip_grad_norm: float | None = 1.0
    meta_batch: int = 4
    accumulate: int = 1

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError("outer.lr", f"must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError("outer.weight_decay", f"must be >= 0, got {self.weight_decay}")
        for key in ("meta_batch", "accumulate"):
            if not 1 <= getattr(self, key) <= MAX_EPISODES:
                raise ConfigError(f"outer.{key}", f"must be in 1..{MAX_EPISODES}, got {getattr(self, key)}")
        if self.meta_batch * self.accumulate > MAX_EPISODES:
            raise ConfigError("outer.meta_batch", f"meta_batch x accumulate must be at most {MAX_EPISODES} episodes "
                                                  f"per outer step, got {self.meta_batch * self.accumulate}")
        if self.warmup_steps < 0:
            raise ConfigError("outer.warmup_steps", "must be >= 0")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ConfigError("outer.clip_grad_norm", "must be > 0 or null")


@dataclasses.dataclass
class TrainConfig:
    """Everything a meta-training run needs (the YAML given to ``metalm train``).

    Attributes:
        model: An embedded model name (``smollm2-135m``), a model folder or a hub name.
        dtype: Parameter dtype (``float32``; bf16 autocast is used on CUDA regardless).
        adapter: Fast weights (LoRA on the top 4 layers by default).
        meta: Base weights the outer loop also learns.
        algorithm: ``name`` of a registered algorithm plus its config fields (``inner`` ...).
        split: A split name (``tasks/splits``) or a split YAML path.
        tasks: Meta-train tasks overriding the split's.
        heldout: Held-out tasks overriding the split's meta-test list (never trained on).
        extra_tasks: Tasks trained on besides the meta-train ones, e.g. ``[shakespeare]`` for the
            language-modeling objective.
        task_dirs: Extra folders of task YAMLs indexed beside the shipped ones.
        sampler: Episode shape and task sampling.
        collate: Tokenization settings.
        outer: Outer optimizer.
        max_steps: Outer steps.
        val_every: Validate on meta-val episodes every this many steps (0: never).
        val_episodes: Meta-val episodes per validation.
        checkpoint_every: Checkpoint every this many steps (and at the end).
        keep_checkpoints: Checkpoints kept.
        max_nonfinite_steps: A step whose loss or meta-gradient is NaN or infinite is skipped (no
            update; counted as ``skipped_nonfinite`` in the log); after this many consecutive ones
            the run stops with an error. Checkpoints never hold a non-finite tensor.
        conflict_every: Measure the objective conflict (pairwise cosine of per-task gradients,
            :mod:`metalm.diagnose`) every this many steps on fixed batches (0: never); the mean
            off-diagonal cosine goes to the log, the matrices to ``conflict.jsonl``.
        conflict_tasks: Training tasks in that measurement (evenly spread over the list; extra
            tasks always included).
        seed: Seed of the adapter initialization and the episode stream.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    model: str = "smollm2-135m"
    dtype: Literal["float32", "float64", "bfloat16"] = "float32"
    adapter: AdapterConfig = dataclasses.field(default_factory=lambda: AdapterConfig(rank=8, alpha=16.0,
                                                                                     layers="top:4"))
    meta: MetaConfig = dataclasses.field(default_factory=MetaConfig)
    algorithm: dict[str, Any] = dataclasses.field(default_factory=lambda: {"name": "fomaml"})
    split: str = "default"
    tasks: list[str] | None = None
    heldout: list[str] | None = None
    extra_tasks: list[str] = dataclasses.field(default_factory=list)
    task_dirs: list[str] = dataclasses.field(default_factory=list)
    sampler: SamplerConfig = dataclasses.field(default_factory=lambda: SamplerConfig(drop_small_classes=True))
    collate: CollateConfig = dataclasses.field(default_factory=lambda: CollateConfig(max_length=160))
    outer: OuterConfig = dataclasses.field(default_factory=OuterConfig)
    max_steps: int = 100
    val_every: int = 25
    val_episodes: int = 8
    checkpoint_every: int = 25
    keep_checkpoints: int = 3
    max_nonfinite_steps: int = 3
    conflict_every: int = 0
    conflict_tasks: int = 8
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        if "name" not in self.algorithm:
            raise ConfigError("algorithm.name", "required field is missing")
        algorithm_config(self.algorithm["name"], {k: v for k, v in self.algorithm.items() if k != "name"})
        for key in ("max_steps", "val_episodes", "checkpoint_every", "keep_checkpoints", "max_nonfinite_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")
        if self.val_every < 0:
            raise ConfigError("val_every", "must be >= 0")
        if self.conflict_every < 0:
            raise ConfigError("conflict_every", "must be >= 0")
        if self.conflict_tasks < 2:
            raise ConfigError("conflict_tasks", f"must be >= 2, got {self.conflict_tasks}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError("seed", f"must be in 0..2**32-1, got {self.seed}")
        if not self.model.strip():
            raise ConfigError("model", "must name a model (an embedded name, a folder or a hub id)")

    def algorithm_config(self) -> Any:
        return algorithm_config(self.algorithm["name"], {k: v for k, v in self.algorithm.items() if k != "name"})


def load_train_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (or defaults when ``path`` is None) and apply ``overrides`` (nested dict)."""
    data: dict[str, Any] = {}
    source = str(path) if path else "command line"
    if path:
        try:
            data = yaml_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError("<file>", " ".join(f"cannot read the config: {err}".split()), source) from None
        if not isinstance(data, dict):
            raise ConfigError("<file>", "expected a mapping", source)
    return from_dict(TrainConfig, deep_merge(data, overrides or {}), source=source)


def build_registry(config: TrainConfig) -> TaskRegistry:
    """The shipped tasks plus the config's ``task_dirs``."""
    return TaskRegistry.from_dirs(packaged_tasks_dir(), *config.task_dirs)


def task_lists(config: TrainConfig, registry: TaskRegistry) -> tuple[list[str], list[str], list[str]]:
    """Meta-train, meta-val and held-out task names after the ``tasks`` / ``heldout`` overrides.

    Raises:
        ConfigError: If a training task is also held out.
    """
    split = load_split(config.split, registry)
    train = list(dict.fromkeys([*(config.tasks or split.meta_train), *config.extra_tasks]))
    heldout = list(config.heldout or split.meta_test)
    val = [t for t in split.meta_val if t not in heldout and t not in train] or train[:1]
    leak = sorted(set(train) & set(heldout))
    if leak:
        raise ConfigError("tasks", f"{leak[0]!r} is held out (split meta_test or heldout) and cannot be trained on")
    for name in (*train, *heldout):
        registry[name]
    return train, val, heldout


def lr_lambda(config: OuterConfig, max_steps: int):  # noqa: ANN201 - a schedule function
    """The learning-rate multiplier at each step (warm-up, then constant / linear / cosine)."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, max_steps - config.warmup_steps)
        if config.schedule == "linear":
            return max(0.0, 1 - progress)
        return 0.5 * (1 + math.cos(math.pi * min(1, progress)))

    return factor


def build_model(config: TrainConfig, device: torch.device,
                tasks: Sequence[Task] = ()) -> tuple[Any, torch.nn.Module, Any, MetaLearner]:
    """Tokenizer, adapter-wrapped model, parameter selection and algorithm of a config.

    The adapter's initialization is drawn from ``config.seed``, so it is the same in every process.
    ``tasks`` (the training tasks) get their per-task parameters (:meth:`MetaLearner.bind_tasks`).
    """
    from transformers import AutoTokenizer

    torch.manual_seed(config.seed)
    path = resolve_model(config.model)
    if path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():  # a path, not a hub id
        raise ConfigError("model", f"{path} is not a folder (a model folder, an embedded name or a hub id)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ConfigError("model", f"cannot load a tokenizer from {path}: {' '.join(str(err).split())[:300]}") \
            from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_model(path, dtype=getattr(torch, config.dtype), device=device)
    model = apply_adapter(model, config.adapter).to(device)
    selection = select_parameters(model, config.adapter, config.meta)
    algorithm = build_algorithm(config.algorithm["name"], model, selection, config.algorithm_config())
    algorithm.bind_tasks(tasks)
    return tokenizer, model, selection, algorithm


def load_run(run_dir: str | Path, device: torch.device | None = None) -> tuple[TrainConfig, Any, MetaLearner, dict]:
    """Rebuild a trained run: its config, tokenizer and algorithm (model inside) at the last checkpoint.

    Returns:
        ``(config, tokenizer, algorithm, base)`` where ``base`` holds the meta-parameters before
        training (the pretrained weights and the standard adapter initialization).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not list_checkpoints(run_dir):
        raise MetalmError(f"{run_dir} holds no trained run (config.yaml and a checkpoint); run `metalm train` first")
    path, tensors, state = latest_checkpoint(run_dir)  # type: ignore[misc]  # checked above: there is one
    config = load_train_config(run_dir / "config.yaml")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    registry = build_registry(config)
    train, _, _ = task_lists(config, registry)
    tokenizer, model, selection, algorithm = build_model(config, device, [registry[t] for t in train])
    base = {k: v.detach().clone() for k, v in algorithm.meta_parameters().items()}
    _restore_algorithm(algorithm, path, tensors, state)
    return config, tokenizer, algorithm, base


def _restore_algorithm(algorithm: MetaLearner, path: Path, tensors: dict[str, torch.Tensor],
                       state: dict[str, Any]) -> None:
    """Copy a checkpoint's meta-parameters and counters into ``algorithm`` (a mismatch names the tensor)."""
    params = algorithm.meta_parameters()
    missing = sorted(set(params) - {k[5:] for k in tensors if k.startswith("meta/")})
    if missing:
        raise MetalmError(f"checkpoint {path} does not match this model/adapter: no tensor for {missing[0]!r}")
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != tensors[f"meta/{name}"].shape:
                raise MetalmError(f"checkpoint {path} does not match this model/adapter: {name!r} has shape "
                                  f"{tuple(tensors[f'meta/{name}'].shape)}, the model {tuple(p.shape)}")
            p.copy_(tensors[f"meta/{name}"])
    try:
        algorithm.outer_steps = int(state["algorithm"]["outer_steps"])
        algorithm.load_extra_state(state["algorithm"].get("extra", {}))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise MetalmError(f"checkpoint {path} is corrupt: state.json algorithm: {err!r}") from None


class MetaTrainer:
    """Meta-train a model on a split's meta-train tasks.

    Args:
        config: The run's config.
        run_dir: Where the config, logs and checkpoints go.
        registry: Tasks to draw from (default: shipped plus ``config.task_dirs``).
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path, registry: TaskRegistry | None = None) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device", "cuda requested but no GPU is available")
        self.ctx = distributed.init(config.device)
        cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda", self.ctx.local_rank) if cuda else torch.device("cpu")
        self.registry = registry or build_registry(config)
        self.train_tasks, self.val_tasks, self.heldout = task_lists(config, self.registry)
        self.tokenizer, self.model, self.selection, self.algorithm = build_model(
            config, self.device, [self.registry[t] for t in self.train_tasks])
        self.optimizer = torch.optim.AdamW(list(self.algorithm.meta_parameters().values()), lr=config.outer.lr,
                                           weight_decay=config.outer.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config.outer, config.max_steps))
        # One episode stream per slot of the global meta-batch (meta_batch x accumulate slots), so the
        # episodes of every outer step are the same whatever the number of processes, and accumulating
        # A meta-batches of B equals one meta-batch of A*B. Each process draws only its own slots.
        batch, micro = config.outer.meta_batch, config.outer.accumulate
        self.micro_slots = [[a * batch + j for j in distributed.shard(batch, self.ctx)] for a in range(micro)]
        pool = [self.registry[t] for t in self.train_tasks]
        # One task index, one independent stream per slot of the global meta-batch.
        first = EpisodeSampler(pool, config.sampler, seed=config.seed, world_size=batch * micro)
        self.samplers = {j: first.fork(j) for slots in self.micro_slots for j in slots}
        self.step = 0
        self.nonfinite = {"total": 0, "run": 0}  # skipped steps: in all, and consecutive up to now
        self._conflict_batches: dict[str, list] | None = None

    # ------------------------------------------------------------------ state
    def _tensors_and_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"meta/{k}": v for k, v in self.algorithm.meta_parameters().items()}
        opt_tensors, opt_state = optimizer_to_flat(self.optimizer)
        rng_tensors, rng_data = rng_state()
        tensors.update(opt_tensors)
        tensors.update(rng_tensors)
        slots: dict[str, Any] = {}
        for part in distributed.gather_objects({str(j): s.state_dict() for j, s in self.samplers.items()}, self.ctx):
            slots.update(part)
        state = {"optimizer": opt_state, "scheduler": self.scheduler.state_dict(), "sampler": {"slots": slots},
                 "algorithm": {"outer_steps": self.algorithm.outer_steps, "extra": self.algorithm.extra_state()},
                 "rng": rng_data, "nonfinite": dict(self.nonfinite),
                 "config": to_dict(self.config), "fast": list(self.selection.fast),
                 "shared": list(self.selection.shared)}
        return tensors, state

    def save(self) -> Path | None:
        """Checkpoint the run now (atomically); under torchrun every process calls it, rank 0 writes."""
        tensors, state = self._tensors_and_state()
        path = None
        if self.ctx.is_main:
            path = save_checkpoint(self.run_dir, self.step, tensors, state, keep=self.config.keep_checkpoints)
        distributed.barrier(self.ctx)
        return path

    def restore(self, path: Path, tensors: dict[str, torch.Tensor] | None = None,
                state: dict[str, Any] | None = None) -> None:
        """Continue from a checkpoint folder (``tensors``/``state``: its contents, if already loaded)."""
        if tensors is None or state is None:
            tensors, state = load_checkpoint(path)
        _restore_algorithm(self.algorithm, path, tensors, state)
        slots = state["sampler"].get("slots", {}) if isinstance(state["sampler"], dict) else {}
        if len(slots) != len(self.micro_slots) * self.config.outer.meta_batch:
            raise MetalmError(f"checkpoint {path} was written with {len(slots)} episode streams (meta_batch x "
                              f"accumulate), not {len(self.micro_slots) * self.config.outer.meta_batch}: resume "
                              "with the same outer config (any number of processes dividing meta_batch works)")
        try:
            optimizer_from_flat(self.optimizer, tensors, state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            for j, sampler in self.samplers.items():
                sampler.load_state_dict(slots[str(j)])
            set_rng_state(tensors, state["rng"])
            self.nonfinite = {k: int(v) for k, v in state.get("nonfinite", {"total": 0, "run": 0}).items()}
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
            raise MetalmError(f"checkpoint {path} is corrupt or from another config: {err!r}") from None
        self.step = int(state["step"])

    # ------------------------------------------------------------------ loop
    @staticmethod
    def _finite(params: Sequence[torch.Tensor], metrics: dict[str, float]) -> bool:
        """Whether the meta-gradient and the logged losses are finite (one device sync)."""
        grads = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
        finite = bool(torch.stack(grads).all()) if grads else True
        return finite and all(math.isfinite(v) for v in metrics.values())

    def _tensorize(self, episode: Any) -> Any:
        # Query rows as the algorithm trains on them: alone, or after the support set (MetaICL, in-context MAML).
        return tensorize(episode, self.tokenizer, self.config.collate, self.algorithm.query_rows).to(self.device)

    def _episodes(self, sampler: EpisodeSampler, n: int) -> list:
        return [self._tensorize(sampler.sample()) for _ in range(n)]

    def _local_batch(self, micro: int) -> list:
        """This process's episodes of accumulation step ``micro`` of the next outer step (one per slot)."""
        return [self._tensorize(self.samplers[j].sample()) for j in self.micro_slots[micro]]

    def _autocast(self):  # noqa: ANN202
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def validate(self) -> dict[str, float]:
        """Mean query loss and token accuracy on fixed meta-val episodes (the same ones every time)."""
        sampler = EpisodeSampler([self.registry[t] for t in self.val_tasks], self.config.sampler,
                                 seed=self.config.seed + 10_000)
        totals: dict[str, float] = {}
        for ep in self._episodes(sampler, self.config.val_episodes):
            with self._autocast():
                for k, v in self.algorithm.evaluate(ep).items():
                    totals[k] = totals.get(k, 0.0) + v / self.config.val_episodes
        return {f"val_{k}": v for k, v in totals.items()}

    def conflict(self) -> dict[str, Any]:
        """The objective conflict of the current weights on fixed batches of the training tasks
        (:func:`metalm.diagnose.gradient_conflict`)."""
        from .diagnose import conflict_batches, gradient_conflict, spread

        cfg = self.config
        if self._conflict_batches is None:
            main = [t for t in self.train_tasks if t not in cfg.extra_tasks]
            picked = spread(main, max(0, cfg.conflict_tasks - len(cfg.extra_tasks)))
            names = list(dict.fromkeys([*picked, *cfg.extra_tasks]))
            self._conflict_batches = conflict_batches([self.registry[t] for t in names], self.tokenizer, batches=2,
                                                      sampler=cfg.sampler, collate_config=cfg.collate,
                                                      seed=cfg.seed, device=self.device)
        with self._autocast():
            return gradient_conflict(self.model, self.selection.meta_params(self.model), self._conflict_batches)

    def train(self, *, resume: bool = False, max_steps: int | None = None, progress: bool = True) -> dict[str, Any]:
        """Run (or continue) meta-training; returns the last logged metrics.

        Under torchrun every process runs this; rank 0 alone writes the config, logs and checkpoints.
        """
        cfg, main = self.config, self.ctx.is_main
        max_steps = max_steps or cfg.max_steps
        log_path = self.run_dir / "log.jsonl"
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            clean_partial(self.run_dir)
        distributed.barrier(self.ctx)
        if not resume and list_checkpoints(self.run_dir):
            raise MetalmError(f"{self.run_dir} already holds a run; pass --resume to continue it or use a new folder")
        found = latest_checkpoint(self.run_dir) if resume else None
        if found is not None:
            self.restore(*found)
        # Drop what was logged after the step we start from (all of it before the first checkpoint):
        # it is recomputed identically.
        for path in (log_path, self.run_dir / "conflict.jsonl"):
            if main and path.exists():
                trim_to_step(path, self.step)
        if main:
            write_atomic(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        writer = _tensorboard(self.run_dir, self.step) if main else None
        bar = _progress(progress and main, self.step, max_steps)
        last: dict[str, Any] = {}
        params = list(self.algorithm.meta_parameters().values())
        with open(log_path, "a", encoding="utf-8") if main else contextlib.nullcontext() as log:
            while self.step < max_steps:
                start = time.perf_counter()
                self.optimizer.zero_grad(set_to_none=True)
                metrics: dict[str, float] = {}
                for micro in range(cfg.outer.accumulate):
                    with self._autocast():
                        m = self.algorithm.meta_gradients(self._local_batch(micro))
                    for k, v in m.items():
                        metrics[k] = metrics.get(k, 0.0) + v / cfg.outer.accumulate
                if cfg.outer.accumulate > 1:
                    for p in params:
                        if p.grad is not None:
                            p.grad.div_(cfg.outer.accumulate)
                distributed.average_gradients(params, self.ctx)
                metrics = distributed.average_metrics(metrics, self.ctx)
                if self._finite(params, metrics):
                    self.nonfinite["run"] = 0
                    if cfg.outer.clip_grad_norm is not None:
                        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.outer.clip_grad_norm))
                    self.optimizer.step()
                else:  # no update; the step still counts (episodes and schedule advance as in any step)
                    self.nonfinite["total"] += 1
                    self.nonfinite["run"] += 1
                    if self.nonfinite["run"] >= cfg.max_nonfinite_steps:
                        raise NonFiniteError(
                            f"{self.run_dir}: {self.nonfinite['run']} consecutive steps (to step {self.step + 1}) "
                            "had a NaN or infinite loss or meta-gradient (max_nonfinite_steps); none was applied "
                            "or saved. Lower algorithm.inner.lr or outer.lr, or check the model's weights; "
                            "--resume continues from the last checkpoint")
                self.scheduler.step()
                self.algorithm.outer_steps += 1
                self.step += 1
                last = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], **metrics,
                        "skipped_nonfinite": self.nonfinite["total"], "seconds": time.perf_counter() - start}
                if main and cfg.val_every and (self.step % cfg.val_every == 0 or self.step == max_steps):
                    last.update(self.validate())
                if main and cfg.conflict_every and (self.step % cfg.conflict_every == 0 or self.step == max_steps):
                    measured = self.conflict()
                    last.update(conflict_mean=measured["mean_offdiag"], conflict_min=measured["min_offdiag"])
                    with open(self.run_dir / "conflict.jsonl", "a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"step": self.step, **measured}) + "\n")
                if log is not None:
                    log.write(json.dumps(last) + "\n")
                    log.flush()
                if writer is not None:
                    for k, v in last.items():
                        if k != "step":
                            writer.add_scalar(k, v, self.step)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics.get('query_loss', float('nan')):.3f}",
                                acc=f"{metrics.get('query_accuracy', float('nan')):.3f}")
                if self.step % cfg.checkpoint_every == 0 or self.step == max_steps:
                    self.save()
        bar.close()
        if writer is not None:
            writer.close()
        return last


def _tensorboard(run_dir: Path, step: int):  # noqa: ANN202 - SummaryWriter or None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    # purge_step: TensorBoard discards events of later steps written before a resume.
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1)


def _progress(enabled: bool, start: int, total: int):  # noqa: ANN202 - a tqdm bar
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, desc="meta-train", dynamic_ncols=True)
