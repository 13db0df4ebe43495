"""A run: the config it was trained with, the model and tasks that config builds, and the trained
values its folder holds.

``load_run`` returns a :class:`Run` value. Evaluation, diagnostics and export read runs through
this module; ``train.py`` keeps only the training recipe (:class:`~metalm.train.MetaTrainer`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from .algorithms import MetaLearner, algorithm_class, algorithm_config, build_algorithm
from .algorithms.base import sharded_algorithms
from .config import AdapterConfig, MetaConfig, deep_merge, from_dict, read_yaml
from .data import CollateConfig, SamplerConfig, Task, TaskRegistry, load_split, packaged_tasks_dir, task_path
from .errors import ConfigError, MetalmError
from .hub import resolve_model
from .models import apply_adapter, load_model
from .params import select_parameters
from .runtime.checkpoint import Checkpoint, latest_checkpoint, list_checkpoints
from .sharding import assign, check_algorithm

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
        if self.weight_decay < 0 or self.lr * self.weight_decay >= 1:
            raise ConfigError("outer.weight_decay", "must be >= 0 with lr x weight_decay < 1 (AdamW scales the weights "
                                                    f"by 1 - lr x weight_decay each step), got {self.weight_decay}")
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
        dtype: Parameter dtype (``float32``; see ``autocast`` for mixed precision).
        autocast: Mixed precision of meta-training's forward and backward passes: ``auto`` (bf16
            autocast on CUDA, none on a CPU), ``bf16`` (on any device: about 2x faster on a CPU with
            AVX512-BF16 or AMX, measured in ``benchmarks/RESULTS.md``; parameters and optimizer
            state stay float32) or ``float32`` (everywhere). Evaluation runs in float32.
        adapter: Fast weights (LoRA on the top 4 layers by default).
        meta: Base weights the outer loop also learns.
        algorithm: ``name`` of a registered algorithm plus its config fields (``inner`` ...).
        split: A split name (``tasks/splits``) or a split YAML path.
        tasks: Meta-train tasks overriding the split's.
        heldout: Held-out tasks overriding the split's meta-test list (never trained on).
        extra_tasks: Tasks trained on besides the meta-train ones, e.g. ``[shakespeare]`` for the
            language-modeling objective.
        pool_fraction: The share of the meta-train tasks trained on (how much the pool's diversity
            matters: MetaICL, Min et al. 2022): the first ``ceil(fraction x n)`` of the sorted task
            list shuffled by ``pool_seed``, so smaller pools are nested in larger ones; extra tasks
            always kept.
        pool_seed: Seed of that shuffle.
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
        max_zero_grad_steps: A step whose meta-gradient is exactly zero in every parameter is not
            applied (counted as ``zero_grad_steps``); after this many consecutive ones the run stops
            with an error (:class:`~metalm.errors.DivergedError`), since a diverged inner loop ends
            there: weights so large that every softmax saturates, a loss pinned at ln(vocabulary)
            and no gradient. One such step alone can be legitimate (a meta-batch whose loss does not
            depend on the meta-parameters); 0 only counts them and never stops.
        conflict_every: Measure the objective conflict (pairwise cosine of per-task gradients,
            :mod:`metalm.diagnostics`) every this many steps on fixed batches (0: never); the mean
            off-diagonal cosine goes to the log, the matrices to ``conflict.jsonl``.
        conflict_tasks: Training tasks in that measurement (evenly spread over the list; extra
            tasks always included).
        seed: Seed of the adapter initialization and the episode stream.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        distributed: Under ``torchrun``: ``replicate`` (every process holds the whole model) or
            ``fsdp`` (the base model and any shared weights sharded across the processes by FSDP2,
            the fast weights replicated; first-order algorithms only, :mod:`metalm.sharding`).
    """

    model: str = "smollm2-135m"
    dtype: Literal["float32", "float64", "bfloat16"] = "float32"
    autocast: Literal["auto", "bf16", "float32"] = "auto"
    adapter: AdapterConfig = dataclasses.field(default_factory=lambda: AdapterConfig(rank=8, alpha=16.0,
                                                                                     layers="top:4"))
    meta: MetaConfig = dataclasses.field(default_factory=MetaConfig)
    algorithm: dict[str, Any] = dataclasses.field(default_factory=lambda: {"name": "fomaml"})
    split: str = "default"
    tasks: list[str] | None = None
    heldout: list[str] | None = None
    extra_tasks: list[str] = dataclasses.field(default_factory=list)
    pool_fraction: float = 1.0
    pool_seed: int = 0
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
    max_zero_grad_steps: int = 3
    conflict_every: int = 0
    conflict_tasks: int = 8
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    distributed: Literal["replicate", "fsdp"] = "replicate"

    def __post_init__(self) -> None:
        if "name" not in self.algorithm:
            raise ConfigError("algorithm.name", "required field is missing")
        alg = self.algorithm_config()
        if self.distributed == "fsdp":
            cls = algorithm_class(self.algorithm["name"])
            check_algorithm(self.algorithm["name"], alg, double_backward=cls.needs_double_backward(alg),
                            first_order=sharded_algorithms())
            cls.check_sharded(alg)
            if self.conflict_every:
                raise ConfigError("conflict_every", "not supported with distributed: fsdp (measure the conflict "
                                                    "with `metalm diagnose` in one process)")
        for key in ("max_steps", "val_episodes", "checkpoint_every", "keep_checkpoints", "max_nonfinite_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")
        if self.val_every < 0:
            raise ConfigError("val_every", "must be >= 0")
        if self.max_zero_grad_steps < 0:
            raise ConfigError("max_zero_grad_steps", f"must be >= 0 (0: never stop), got {self.max_zero_grad_steps}")
        if self.conflict_every < 0:
            raise ConfigError("conflict_every", "must be >= 0")
        if self.conflict_tasks < 2:
            raise ConfigError("conflict_tasks", f"must be >= 2, got {self.conflict_tasks}")
        if not 0 < self.pool_fraction <= 1:
            raise ConfigError("pool_fraction", f"must be in (0, 1] (a share of the meta-train tasks), "
                                               f"got {self.pool_fraction}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError("seed", f"must be in 0..2**32-1, got {self.seed}")
        if not self.model.strip():
            raise ConfigError("model", "must name a model (an embedded name, a folder or a hub id)")

    def algorithm_config(self) -> Any:
        """The algorithm's typed config (its registered dataclass), parsed once from ``algorithm``
        (again only if that dict was changed since)."""
        key = json.dumps(self.algorithm, sort_keys=True, default=str)
        parsed = self.__dict__.get("_algorithm_parsed")
        if parsed is None or parsed[0] != key:
            parsed = (key, algorithm_config(self.algorithm["name"],
                                            {k: v for k, v in self.algorithm.items() if k != "name"}))
            self.__dict__["_algorithm_parsed"] = parsed
        return parsed[1]


def load_train_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (or defaults when ``path`` is None) and apply ``overrides`` (nested dict)."""
    data: dict[str, Any] = {}
    source = str(path) if path else "command line"
    if path:
        data = read_yaml(path, what="config") or {}
        if not isinstance(data, dict):
            raise ConfigError("<file>", "expected a mapping", source)
    return from_dict(TrainConfig, deep_merge(data, overrides or {}), source=source)


def build_registry(config: TrainConfig) -> TaskRegistry:
    """The shipped tasks, those in ``$METALM_TASK_PATH`` and the config's ``task_dirs``."""
    return TaskRegistry.from_dirs(packaged_tasks_dir(), *task_path(), *config.task_dirs)


def task_lists(config: TrainConfig, registry: TaskRegistry) -> tuple[list[str], list[str], list[str]]:
    """Meta-train, meta-val and held-out task names after the ``tasks`` / ``heldout`` overrides.

    Raises:
        ConfigError: If a training task is also held out.
    """
    split = load_split(config.split, registry)
    pool = list(config.tasks or split.meta_train)
    if config.pool_fraction < 1:  # nested subsets: one shuffle of the sorted list, its first k
        order = random.Random(config.pool_seed).sample(sorted(set(pool)), len(set(pool)))
        kept = set(order[:math.ceil(config.pool_fraction * len(order))])
        pool = [t for t in pool if t in kept]
    train = list(dict.fromkeys([*pool, *config.extra_tasks]))
    heldout = list(config.heldout or split.meta_test)
    val = [t for t in split.meta_val if t not in heldout and t not in train] or train[:1]
    leak = sorted(set(train) & set(heldout))
    if leak:
        raise ConfigError("tasks", f"{leak[0]!r} is held out (split meta_test or heldout) and cannot be trained on")
    for name in (*train, *heldout):
        registry[name]
    return train, val, heldout


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


@dataclasses.dataclass
class Run:
    """A trained run at its newest intact checkpoint.

    Attributes:
        config: The run's config.
        tokenizer: Its tokenizer.
        learner: Its algorithm (model, parameter selection, inner config, counters). The model
            holds the pretrained values (``base``) until :meth:`load_into_model` is called: the
            trained values travel as ``trained``.
        base: The meta-parameters before training (the pretrained weights and the standard adapter
            initialization), plain tensors by name.
        trained: The trained meta-parameters (fast-weight initialization, shared weights, learned
            inner rates), plain tensors by name.
        checkpoint: The checkpoint read (:class:`~metalm.runtime.checkpoint.Checkpoint`: folder, tensors, state).
    """

    config: TrainConfig
    tokenizer: Any
    learner: MetaLearner
    base: dict[str, Tensor]
    trained: dict[str, Tensor]
    checkpoint: Checkpoint

    @property
    def step(self) -> int:
        """The checkpoint's outer step."""
        return self.checkpoint.step

    @property
    def kind(self) -> str:
        """Its evaluation row: ``meta``, ``mtl`` or ``hyper`` (:func:`run_kind`)."""
        return run_kind(self.config)

    def load_into_model(self) -> MetaLearner:
        """Write ``trained`` into the learner's tensors (for what runs the model's own weights: export,
        the gradient-conflict diagnostic); returns the learner."""
        copy_values(self.learner, self.trained)
        return self.learner


def run_kind(config: TrainConfig) -> str:
    """Its evaluation row, as its algorithm declares it (:attr:`MetaLearner.row`): ``mtl`` for a multi-task
    run, ``hyper`` for a hypernetwork run, ``meta`` for a meta-learning run."""
    return algorithm_class(config.algorithm["name"]).row


def load_run(run_dir: str | Path, device: torch.device | None = None, checkpoint: Checkpoint | None = None) -> Run:
    """Rebuild a trained run from its folder: config, model, tasks and its newest intact checkpoint
    (``checkpoint``: that checkpoint, when the caller has read it already; it is not read again).

    Raises:
        ConfigError: If ``run_dir`` is not a path or the folder holds no trained run.
        MetalmError: If no checkpoint in it is intact.
    """
    if not isinstance(run_dir, (str, os.PathLike)):
        raise ConfigError("run_dir", f"must be a path to a run folder, got {type(run_dir).__name__}")
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not list_checkpoints(run_dir):
        raise ConfigError("run_dir", f"{run_dir} holds no trained run (config.yaml and a checkpoint); "
                                     "run `metalm train` first")
    checkpoint = checkpoint or latest_checkpoint(run_dir)
    assert checkpoint is not None  # checked above: there is one
    config = load_train_config(run_dir / "config.yaml")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    registry = build_registry(config)
    train, _, _ = task_lists(config, registry)
    tokenizer, model, selection, algorithm = build_model(config, device, [registry[t] for t in train])
    base = {k: v.detach().clone() for k, v in algorithm.meta_parameters().items()}
    trained = checkpoint_values(algorithm, checkpoint)
    restore_counters(algorithm, checkpoint)
    return Run(config, tokenizer, algorithm, base, trained, checkpoint)


def checkpoint_values(algorithm: MetaLearner, checkpoint: Checkpoint) -> dict[str, Tensor]:
    """A checkpoint's meta-parameter values by :meth:`~MetaLearner.meta_parameters` name, on the
    learner's device and dtypes.

    Raises:
        MetalmError: If a meta-parameter is missing or has another shape (naming it).
    """
    out, path = {}, checkpoint.path
    for name, p in algorithm.meta_parameters().items():
        value = checkpoint.tensors.get(f"meta/{name}")
        if value is None:
            raise MetalmError(f"checkpoint {path} does not match this model/adapter: no tensor for {name!r}")
        if p.shape != value.shape:
            raise MetalmError(f"checkpoint {path} does not match this model/adapter: {name!r} has shape "
                              f"{tuple(value.shape)}, the model {tuple(p.shape)}")
        out[name] = value.to(device=p.device, dtype=p.dtype)
    return out


def copy_values(algorithm: MetaLearner, values: Mapping[str, Tensor]) -> None:
    """Write meta-parameter values (:func:`checkpoint_values`) into the learner's own tensors
    (sharded ones get their own part)."""
    for name, p in algorithm.meta_parameters().items():
        assign(p, values[name])


def restore_algorithm(algorithm: MetaLearner, checkpoint: Checkpoint) -> None:
    """Copy a checkpoint's meta-parameters and counters into ``algorithm`` (a mismatch names the tensor)."""
    copy_values(algorithm, checkpoint_values(algorithm, checkpoint))
    restore_counters(algorithm, checkpoint)


def restore_counters(algorithm: MetaLearner, checkpoint: Checkpoint) -> None:
    """Restore a checkpoint's algorithm state (:meth:`MetaLearner.load_state_dict`: the outer-step
    counter and what the algorithm adds).

    Raises:
        MetalmError: If the state's ``algorithm`` record is malformed.
    """
    try:
        state = checkpoint.state["algorithm"]
        algorithm.load_state_dict({**state.get("extra", {}), **state})  # "extra": as checkpoints before 2026-12-04
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise MetalmError(f"checkpoint {checkpoint.path} is corrupt: state.json algorithm: {err!r}") from None


