"""The meta-training recipe: config in, checkpoints and metrics out.

``MetaTrainer`` draws meta-batches of episodes from a split's meta-train tasks, takes outer steps
with the configured algorithm (AdamW with schedule and clipping by default, gradient accumulation
over tasks), validates periodically on meta-val episodes, logs to ``log.jsonl`` (and TensorBoard
when installed), and checkpoints atomically so that ``resume=True`` continues a killed run to the
same final weights as an uninterrupted one (bit-identical on CPU).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import to_dict
from .data import EpisodeSampler, TaskRegistry, tensorize
from .errors import AnswerTooLong, ConfigError, DivergedError, MetalmError, NonFiniteError
from .eval.inits import init_of, query_metrics
from .run import (  # noqa: F401 - re-exported: the config and model builders lived here
    MAX_EPISODES,
    OuterConfig,
    Run,
    TrainConfig,
    build_model,
    build_registry,
    load_run,
    load_train_config,
    restore_algorithm,
    task_lists,
)
from .runtime import distributed
from .runtime.checkpoint import (
    Checkpoint,
    clean_partial,
    latest_checkpoint,
    list_checkpoints,
    optimizer_from_flat,
    optimizer_to_flat,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .runtime.environment import warn_if_emulated_bf16
from .runtime.files import trim_to_step, write_atomic
from .runtime.longrun import Interrupted, RunLock, StopSignals, signal_name
from .sharding import full, parameter_bytes, shard_model, shard_optimizer_state

MAX_UNFIT_DRAWS = 1000
"""Episodes in a row that may be skipped for an answer longer than ``collate.max_length`` before a
run stops with an error (:meth:`MetaTrainer._draw`)."""


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
        if config.autocast == "bf16":
            warn_if_emulated_bf16(self.device.type, "training")
        self.registry = registry or build_registry(config)
        self.train_tasks, self.val_tasks, self.heldout = task_lists(config, self.registry)
        self.tokenizer, self.model, self.selection, self.algorithm = build_model(
            config, self.device, [self.registry[t] for t in self.train_tasks])
        # distributed: fsdp shards the base before the optimizer sees its tensors (one process: nothing to shard).
        self.sharded = config.distributed == "fsdp" and self.ctx.enabled
        if self.sharded:
            shard_model(self.model, self.selection, self.ctx.world_size)
            self.algorithm.prefix_layer = None  # the frozen-prefix cache calls layers outside FSDP's hooks
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
        self.dropped = first.dropped  # meta-train tasks too small for the episode shape (sampler.drop_small_tasks)
        self.unfit: dict[str, int] = {}  # episodes skipped for an answer longer than collate.max_length (_draw)
        self.step = 0
        self.nonfinite = {"total": 0, "run": 0}  # skipped steps: in all, and consecutive up to now
        self.zero_grad = {"total": 0, "run": 0}  # steps with an exactly zero meta-gradient, likewise
        self._conflict_batches: dict[str, list] | None = None

    # ------------------------------------------------------------------ state
    def _tensors_and_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"meta/{k}": full(v) for k, v in self.algorithm.meta_parameters().items()}
        opt_tensors, opt_state = optimizer_to_flat(self.optimizer)
        rng_tensors, rng_data = rng_state()
        tensors.update(opt_tensors)
        tensors.update(rng_tensors)
        slots: dict[str, Any] = {}
        for part in distributed.gather_objects({str(j): s.state_dict() for j, s in self.samplers.items()}, self.ctx):
            slots.update(part)
        state = {"optimizer": opt_state, "scheduler": self.scheduler.state_dict(), "sampler": {"slots": slots},
                 "algorithm": self.algorithm.state_dict(),
                 "rng": rng_data, "nonfinite": dict(self.nonfinite),
                 "zero_grad": dict(self.zero_grad),
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

    def restore(self, checkpoint: Checkpoint | Path) -> None:
        """Continue from a checkpoint (read already, or a folder to read)."""
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = read_checkpoint(checkpoint)
        path, tensors, state = checkpoint.path, checkpoint.tensors, checkpoint.state
        if state.get("weights_only"):
            raise MetalmError(f"checkpoint {path} holds weights only (a finished run's committed state keeps what "
                              "scoring reads, without the optimizer's state): evaluate it; it cannot be resumed")
        restore_algorithm(self.algorithm, checkpoint)
        slots = state["sampler"].get("slots", {}) if isinstance(state["sampler"], dict) else {}
        if len(slots) != len(self.micro_slots) * self.config.outer.meta_batch:
            raise MetalmError(f"checkpoint {path} was written with {len(slots)} episode streams (meta_batch x "
                              f"accumulate), not {len(self.micro_slots) * self.config.outer.meta_batch}: resume "
                              "with the same outer config (any number of processes dividing meta_batch works)")
        try:
            optimizer_from_flat(self.optimizer, tensors, state["optimizer"])
            shard_optimizer_state(self.optimizer)
            self.scheduler.load_state_dict(state["scheduler"])
            for j, sampler in self.samplers.items():
                sampler.load_state_dict(slots[str(j)])
            set_rng_state(tensors, state["rng"])
            self.nonfinite = {k: int(v) for k, v in state.get("nonfinite", {"total": 0, "run": 0}).items()}
            self.zero_grad = {k: int(v) for k, v in state.get("zero_grad", {"total": 0, "run": 0}).items()}
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
            raise MetalmError(f"checkpoint {path} is corrupt or from another config: {err!r}") from None
        self.step = int(state["step"])

    # ------------------------------------------------------------------ loop
    def _tensorize(self, episode: Any) -> Any:
        # Query rows as the algorithm trains on them: alone, or after the support set (MetaICL, in-context MAML).
        return tensorize(episode, self.tokenizer, self.config.collate, self.algorithm.queries).to(self.device)

    def _draw(self, sampler: EpisodeSampler) -> Any:
        """The sampler's next episode that fits ``collate.max_length``, tensorized. An episode holding an
        answer longer than that (a generation task's long target) cannot be trained on: it is skipped
        and another drawn, the same way on every run and resume; each task's first skip is warned
        and every skip counted in :attr:`unfit` (task -> episodes skipped this process)."""
        for _ in range(MAX_UNFIT_DRAWS):
            episode = sampler.sample()
            try:
                return self._tensorize(episode)
            except AnswerTooLong as err:
                if episode.task not in self.unfit:
                    warnings.warn(f"collate.max_length: an episode of {episode.task!r} skipped and another drawn: "
                                  f"{err} (raise collate.max_length to train on it)", stacklevel=2)
                self.unfit[episode.task] = self.unfit.get(episode.task, 0) + 1
        raise MetalmError(f"{MAX_UNFIT_DRAWS} episodes in a row hold an answer longer than collate.max_length="
                          f"{self.config.collate.max_length} (tasks {', '.join(sorted(self.unfit))}): raise it")

    def _episodes(self, sampler: EpisodeSampler, n: int) -> list:
        return [self._draw(sampler) for _ in range(n)]

    def _local_batch(self, micro: int) -> list:
        """This process's episodes of accumulation step ``micro`` of the next outer step (one per slot)."""
        return [self._draw(self.samplers[j]) for j in self.micro_slots[micro]]

    def _micro_batches(self, shapes: list[tuple[str, int]]) -> Iterator[list]:
        """The next outer step's local meta-batches, one per accumulation step, drawn as they are
        needed; each episode's (task, tokens) is appended to ``shapes``."""
        for micro in range(self.config.outer.accumulate):
            batch = self._local_batch(micro)
            shapes.extend((ep.task, int(ep.support["input_ids"].numel() + ep.query["input_ids"].numel()))
                          for ep in batch)
            yield batch

    def _sync(self, params: list[torch.Tensor], metrics: dict[str, float]) -> dict[str, float]:
        """Average the meta-gradients and metrics over the processes (a no-op in one process)."""
        distributed.average_gradients(params, self.ctx)
        return distributed.average_metrics(metrics, self.ctx)

    def _autocast(self):  # noqa: ANN202
        """bf16 autocast on CUDA (``autocast: auto``) or on any device (``bf16``); none with ``float32``."""
        mode = self.config.autocast
        on = mode == "bf16" or (mode == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

    def validate(self) -> dict[str, float]:
        """Mean query loss and token accuracy on fixed meta-val episodes (the same ones every time).
        With a sharded model every process must call it (the layers' weights are gathered)."""
        sampler = EpisodeSampler([self.registry[t] for t in self.val_tasks], self.config.sampler,
                                 seed=self.config.seed + 10_000)
        totals: dict[str, float] = {}
        init = init_of(self.algorithm)  # the current initialization, adapted as training adapts it
        for ep in self._episodes(sampler, self.config.val_episodes):
            with self._autocast():
                for k, v in query_metrics(self.model, init, ep, self.algorithm.prefix_layer).items():
                    totals[k] = totals.get(k, 0.0) + v / self.config.val_episodes
        return {f"val_{k}": v for k, v in totals.items()}

    def conflict(self) -> dict[str, Any]:
        """The objective conflict of the current weights on fixed batches of the training tasks
        (:func:`metalm.diagnostics.gradient_conflict`)."""
        from .diagnostics.measures import conflict_batches, gradient_conflict, spread

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
        with contextlib.ExitStack() as stack:
            if self.ctx.is_main:  # one writer per run folder, taken before anything in it is touched
                stack.enter_context(RunLock(self.run_dir))
            signals = stack.enter_context(StopSignals())
            return self._train(signals, resume=resume, max_steps=max_steps, progress=progress)

    def _open_folder(self, resume: bool) -> None:
        """Create or resume the run folder: leftovers of killed writes removed, the newest intact
        checkpoint restored, what was logged after it dropped (all of it before the first
        checkpoint: it is recomputed identically), the config written."""
        main = self.ctx.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            clean_partial(self.run_dir)
        distributed.barrier(self.ctx)
        if not resume and list_checkpoints(self.run_dir):
            raise MetalmError(f"{self.run_dir} already holds a run; pass --resume to continue it or use a new folder")
        found = latest_checkpoint(self.run_dir) if resume else None
        if found is not None:
            self.restore(found)
        for path in (self.run_dir / "log.jsonl", self.run_dir / "conflict.jsonl"):
            if main and path.exists():
                trim_to_step(path, self.step)
        if main:
            write_atomic(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(self.config), sort_keys=False))

    def _count_nonfinite(self, skipped: bool) -> None:
        """Count a step skipped for a non-finite loss or meta-gradient (no update; the step still counts:
        episodes and schedule advance as in any step); too many in a row end the run."""
        if not skipped:
            self.nonfinite["run"] = 0
            return
        self.nonfinite["total"] += 1
        self.nonfinite["run"] += 1
        if self.nonfinite["run"] >= self.config.max_nonfinite_steps:
            raise NonFiniteError(
                f"{self.run_dir}: {self.nonfinite['run']} consecutive steps (to step {self.step + 1}) "
                "had a NaN or infinite loss or meta-gradient (max_nonfinite_steps); none was applied "
                "or saved. Lower algorithm.inner.lr or outer.lr, or check the model's weights; "
                "--resume continues from the last checkpoint")

    def _count_zero_grad(self, zero: bool, metrics: dict[str, float]) -> None:
        """Count a step whose meta-gradient was exactly zero (not applied); too many in a row end the run
        (``max_zero_grad_steps``): finite values that carry no signal are a divergence too."""
        if not zero:
            self.zero_grad["run"] = 0
            return
        self.zero_grad["total"] += 1
        self.zero_grad["run"] += 1
        limit = self.config.max_zero_grad_steps
        if limit and self.zero_grad["run"] >= limit:
            vocab = getattr(self.model.config, "vocab_size", None)
            loss = metrics.get("query_loss")
            pinned = (f"; query loss {loss:.4f}, ln V = {math.log(vocab):.4f} for a uniform guess over the "
                      f"{vocab}-token vocabulary" if vocab and loss is not None else "")
            raise DivergedError(
                f"{self.run_dir}: {self.zero_grad['run']} consecutive steps (to step {self.step + 1}) had a "
                f"meta-gradient of exactly zero{pinned}: the inner loop has likely diverged into saturation "
                "and the run learns nothing; none was applied. Lower algorithm.inner.lr (or the adapter's "
                "alpha); max_zero_grad_steps=0 only counts such steps")

    def _log(self, row: dict[str, Any], log: Any, log_path: Path, writer: Any) -> None:
        """One step's row to ``log.jsonl`` (flushed) and its numbers to tensorboard (main process)."""
        if log is not None:
            try:
                log.write(json.dumps(row) + "\n")
                log.flush()
            except OSError as err:
                err.filename = err.filename or str(log_path)  # a full disk: named in the one-line error
                raise
        if writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, self.step)

    def _train(self, signals: StopSignals, *, resume: bool, max_steps: int | None, progress: bool) -> dict[str, Any]:
        cfg, main = self.config, self.ctx.is_main
        max_steps = max_steps or cfg.max_steps
        log_path = self.run_dir / "log.jsonl"
        self._open_folder(resume)
        writer = _tensorboard(self.run_dir, self.step) if main else None
        bar = _progress(progress and main, self.step, max_steps)
        last: dict[str, Any] = {}
        interrupted: Interrupted | None = None
        held, whole = parameter_bytes(self.model, [n for n, _ in self.model.named_parameters()
                                                   if n not in self.selection.fast])
        base_mib = {"held": [h / 2**20 for h in distributed.gather_objects(held, self.ctx)], "whole": whole / 2**20}
        with open(log_path, "a", encoding="utf-8") if main else contextlib.nullcontext() as log:
            while self.step < max_steps:
                start = time.perf_counter()
                shapes: list[tuple[str, int]] = []  # (task, tokens) of each episode: what the step cost
                metrics = self.algorithm.step(self._micro_batches(shapes), self.optimizer,
                                              clip_grad_norm=cfg.outer.clip_grad_norm, sync=self._sync,
                                              autocast=self._autocast)
                self._count_nonfinite(bool(metrics.pop("skipped")))
                self._count_zero_grad(bool(metrics.pop("zero_grad")), metrics)
                self.scheduler.step()
                self.step += 1
                shapes = [s for part in distributed.gather_objects(shapes, self.ctx) for s in part]
                last = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], **metrics,
                        "skipped_nonfinite": self.nonfinite["total"], "zero_grad_steps": self.zero_grad["total"],
                        "seconds": time.perf_counter() - start,
                        "tasks": [t for t, _ in shapes], "tokens": [n for _, n in shapes]}
                if self.step == 1:  # MiB of the base model each process holds (1/N of it under fsdp)
                    last["base_param_mib"] = base_mib
                if (main or self.sharded) and cfg.val_every and (self.step % cfg.val_every == 0
                                                                or self.step == max_steps):
                    measured = self.validate()
                    if main:
                        last.update(measured)
                if main and cfg.conflict_every and (self.step % cfg.conflict_every == 0 or self.step == max_steps):
                    measured = self.conflict()
                    last.update(conflict_mean=measured["mean_offdiag"], conflict_min=measured["min_offdiag"])
                    with open(self.run_dir / "conflict.jsonl", "a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"step": self.step, **measured}) + "\n")
                self._log(last, log, log_path, writer)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics.get('query_loss', float('nan')):.3f}",
                                acc=f"{metrics.get('query_accuracy', float('nan')):.3f}")
                due = self.step % cfg.checkpoint_every == 0 or self.step == max_steps
                if due:
                    self.save()
                stop = signals.requested
                if self.ctx.enabled:  # every process stops after the same step
                    stop = next((s for s in distributed.gather_objects(stop, self.ctx) if s), None)
                if stop:
                    if not due:
                        self.save()
                    interrupted = Interrupted(stop, f"stopped by {signal_name(stop)} after step {self.step}: "
                                                    f"checkpoint step-{self.step:07d} written; --resume continues")
                    break
        bar.close()
        if writer is not None:
            writer.close()
        if interrupted is not None:
            raise interrupted
        if self.nonfinite["run"]:
            raise NonFiniteError(
                f"{self.run_dir}: the run ended on {self.nonfinite['run']} step(s) with a NaN or infinite loss or "
                "meta-gradient (skipped: the saved weights are finite but did not learn from them); lower "
                "algorithm.inner.lr or outer.lr, or check the model's weights and the adapter's alpha")
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
