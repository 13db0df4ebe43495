"""Multi-task learning over the meta-train tasks: the baseline every meta-learning study must beat.

There is no inner loop in training: each outer step takes the meta-batch's episodes (support and
query examples alike are training examples), computes one loss per task ``L`` ``[T]`` with the
current weights, and combines them with a loss weighting or a torchjd aggregator
(:mod:`metalm.algorithms.weighting`). The trained weights are an initialization like any other:
``metalm eval`` adapts them on each episode's support set with the same inner loop (the ``mtl``
rows), so multi-task and meta-learned initializations are compared on the same episodes.

Architectures (``heads``): a shared backbone with the shared LM head and verbalizers, or a shared
backbone with a linear head per classification task on the final hidden state at the position that
predicts the answer (Caruana 1997's "shared encoder + task-specific heads"). The heads are for
training only: a held-out task has none, so evaluation always goes through the LM head.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from ..config import InnerConfig
from ..data.episode import Episode
from ..errors import ConfigError
from ..losses import Batch, lm_loss_and_accuracy, prepare_batch, target_hidden
from ..models import causal_lm
from ..params import ParameterSelection
from .base import MetaLearner, register_algorithm
from .weighting import (
    aggregators,
    build_aggregator,
    dwa_weights,
    gradnorm_update,
    uncertainty_objective,
    weighting_options,
)


@dataclasses.dataclass
class MultitaskConfig:
    """Multi-task training of the same parameters the meta-learners train.

    Attributes:
        inner: The inner loop that adapts the trained weights to a new task (meta-validation and
            ``metalm eval``); training itself has none.
        weighting: ``equal``, ``fixed``, ``uncertainty``, ``dwa``, ``gradnorm``, or the lower-case
            name of a torchjd aggregator (``upgrad``, ``pcgrad``, ``cagrad``, ``mgda``, ``imtlg``,
            ``nashmtl``, ``alignedmtl``, ``gradvac``, ``dualproj``, ``config`` ...).
        weights: Task weights of ``fixed`` by task name (tasks not listed weigh 1).
        options: ``temperature`` (dwa, default 2), ``alpha`` and ``lr`` (gradnorm, defaults 1.5 and
            0.025), or keyword arguments of the torchjd aggregator (e.g. ``c`` for cagrad).
        heads: ``shared`` (the LM head for every task) or ``task`` (a linear head per
            classification task; other task types keep the LM head).
    """

    inner: InnerConfig = dataclasses.field(default_factory=lambda: InnerConfig(first_order=True))
    weighting: str = "equal"
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    heads: Literal["shared", "task"] = "shared"

    def __post_init__(self) -> None:
        self.options = weighting_options(self.weighting, self.options)
        if self.weights and self.weighting != "fixed":
            raise ConfigError("algorithm.weights", f"only the fixed weighting reads weights, not {self.weighting}")
        bad = [k for k, v in self.weights.items() if not isinstance(v, (int, float)) or v < 0]
        if bad:
            raise ConfigError(f"algorithm.weights.{bad[0]}", "must be a number >= 0")


SHARDABLE_WEIGHTINGS = ("equal", "fixed", "uncertainty", "dwa")  # no per-task gradient of the shared weights


@register_algorithm("multitask", MultitaskConfig)
class Multitask(MetaLearner):
    """Multi-task learning with loss weighting or gradient aggregation.

    Per-task state (task heads, uncertainty log-variances) is created by :meth:`bind_tasks`, which
    the trainer calls before building the outer optimizer.
    """

    @classmethod
    def needs_double_backward(cls, config: Any) -> bool:
        """Never: no gradient of a gradient (its inner config only serves evaluation or is first-order)."""
        return False

    @classmethod
    def check_sharded(cls, config: Any) -> None:
        """Weightings that combine each task's gradient of the shared weights (GradNorm, torchjd's
        aggregators) cannot run on FSDP's shards; those that weight the losses can."""
        if config.weighting not in SHARDABLE_WEIGHTINGS:
            raise ConfigError("algorithm.weighting",
                              f"{config.weighting!r} is not supported with distributed: fsdp: it combines each "
                              "task's gradient of the shared weights, which FSDP holds in shards; use one of "
                              f"{', '.join(SHARDABLE_WEIGHTINGS)} (they weight the losses), or distributed: replicate")

    row = "mtl"
    row_names_algorithm = False
    lends_inner = False
    borrows_inner = True  # its weights are evaluated with a meta-learning run's inner loop when beside one

    def __init__(self, model: nn.Module, selection: ParameterSelection, config: MultitaskConfig) -> None:
        super().__init__(model, selection, config)
        self.task_params: dict[str, nn.Parameter] = {}
        self.head_labels: dict[str, list[str]] = {}
        self.history: dict[str, list[float]] = {}  # last two losses (dwa) or the first loss (gradnorm), by task
        self.gradnorm_weights: dict[str, float] = {}
        self._aggregators: dict[int, Any] = {}  # by number of tasks (Nash-MTL's size is fixed)

    # ------------------------------------------------------------------ per-task state
    def bind_tasks(self, tasks: Sequence[Any]) -> None:
        """Create the heads (``heads: task``) and log-variances (``uncertainty``) of ``tasks`` (Task objects)."""
        ref = causal_lm(self.model).get_output_embeddings().weight
        for task in tasks:
            if self.config.weighting == "uncertainty":
                self.task_params[f"log_var/{task.name}"] = nn.Parameter(torch.zeros((), dtype=ref.dtype,
                                                                                    device=ref.device))
            if self.config.heads == "task" and task.spec.type == "classification":
                labels = list(task.spec.labels)
                weight = torch.randn(len(labels), ref.shape[1], dtype=ref.dtype, device=ref.device) * 0.02
                self.task_params[f"head/{task.name}/weight"] = nn.Parameter(weight)
                self.task_params[f"head/{task.name}/bias"] = nn.Parameter(torch.zeros_like(weight[:, 0]))
                self.head_labels[task.name] = labels

    def meta_parameters(self) -> dict[str, Tensor]:
        return {**super().meta_parameters(), **{f"task/{k}": v for k, v in self.task_params.items()}}

    def export(self, out: Path, base_ref: str) -> list[str]:
        """``task_params.safetensors``: the task heads and log-variances (none: nothing written)."""
        if not self.task_params:
            return []
        save_file({n: p.detach().contiguous() for n, p in self.task_params.items()},
                  str(out / "task_params.safetensors"))
        return ["task_params.safetensors"]

    def state_dict(self) -> dict[str, Any]:
        """The outer-step counter, each task's loss history and GradNorm's weights."""
        return {**super().state_dict(), "history": self.history, "gradnorm_weights": self.gradnorm_weights}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.history = {k: list(v) for k, v in state.get("history", {}).items()}
        self.gradnorm_weights = dict(state.get("gradnorm_weights", {}))

    # ------------------------------------------------------------------ losses
    def _loss(self, episode: Episode, batch: Batch, part: str) -> tuple[Tensor, Tensor]:
        if episode.task not in self.head_labels:
            if self.config.heads == "task" and episode.text is not None and episode.text.type == "classification":
                self._task_param(f"head/{episode.task}/weight")  # an unbound task: say so
            return lm_loss_and_accuracy(self.model, {}, batch)
        if episode.text is None:
            raise ConfigError("algorithm.heads", "task heads need episodes that keep their text "
                                                 "(metalm.data.tensorize)")
        labels = self.head_labels[episode.task]
        examples = getattr(episode.text, part)
        target = torch.tensor([labels.index(episode.text.classes[ex.label]) for ex in examples],
                              device=batch["input_ids"].device)
        hidden = target_hidden(self.model, {}, prepare_batch(batch))[:, 0]  # [B, H]
        w, b = (self.task_params[f"head/{episode.task}/{k}"] for k in ("weight", "bias"))
        logits = F.linear(hidden, w, b).float()  # [B, C]
        return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()

    def task_losses(self, episodes: Sequence[Episode]) -> tuple[list[str], Tensor, dict[str, float]]:
        """Per-task losses ``[T]`` of a meta-batch (episodes of one task averaged) and metrics."""
        by_task: dict[str, list[Tensor]] = {}
        q_loss = q_acc = 0.0
        for ep in episodes:
            s, _ = self._loss(ep, ep.support, "support")
            q, acc = self._loss(ep, ep.query, "query")
            by_task.setdefault(ep.task, []).append((s + q) / 2)
            q_loss, q_acc = q_loss + float(q.detach()) / len(episodes), q_acc + float(acc) / len(episodes)
        losses = torch.stack([torch.stack(v).mean() for v in by_task.values()])
        return list(by_task), losses, {"query_loss": q_loss, "query_accuracy": q_acc, "tasks": len(by_task)}

    # ------------------------------------------------------------------ outer step
    def meta_gradients(self, episodes: Sequence[Episode]) -> dict[str, float]:
        names, losses, metrics = self.task_losses(episodes)
        kind = self.config.weighting
        if kind in aggregators():
            self._aggregate(names, losses)
            metrics["loss"] = float(losses.detach().mean())
        else:
            weights = self._weights(names, losses)
            if kind == "uncertainty":
                log_vars = torch.stack([self._task_param(f"log_var/{n}") for n in names])
                objective = uncertainty_objective(losses, log_vars) / len(names)
                weights = torch.exp(-log_vars.detach())
            else:
                objective = (weights * losses).sum() / len(names)
            objective.backward()
            metrics["loss"] = float(objective.detach())
            metrics.update({f"weight/{n}": float(w) for n, w in zip(names, weights, strict=True)})
        self._record(names, losses.detach())
        return metrics

    def _task_param(self, key: str) -> nn.Parameter:
        if key not in self.task_params:
            raise ConfigError("algorithm", f"no {key!r}: call bind_tasks() with every training task before "
                                           "building the optimizer")
        return self.task_params[key]

    def _weights(self, names: list[str], losses: Tensor) -> Tensor:
        cfg, opts = self.config, self.config.options
        if cfg.weighting == "fixed":
            return losses.new_tensor([float(cfg.weights.get(n, 1.0)) for n in names])
        if cfg.weighting == "dwa":
            ratios = [h[-1] / h[-2] if len(h := self.history.get(n, [])) == 2 else 1.0 for n in names]
            return dwa_weights(losses.new_tensor(ratios), opts["temperature"])
        if cfg.weighting == "gradnorm":
            return self._gradnorm(names, losses)
        return torch.ones_like(losses.detach())

    def _gradnorm(self, names: list[str], losses: Tensor) -> Tensor:
        """This step's GradNorm weights (used for the loss now), and the update for the next step."""
        weights = losses.new_tensor([self.gradnorm_weights.get(n, 1.0) for n in names])
        top = self._top_layer_params()
        norms = []
        for loss in losses:
            grads = torch.autograd.grad(loss, top, retain_graph=True, allow_unused=True)
            norms.append(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
        current = losses.detach().tolist()
        initial = losses.new_tensor([self.history.get(n, [loss])[0] for n, loss in zip(names, current, strict=True)])
        new = gradnorm_update(weights, torch.stack(norms).to(weights), losses.detach() / initial,
                              self.config.options["alpha"], self.config.options["lr"])
        self.gradnorm_weights.update({n: float(w) for n, w in zip(names, new, strict=True)})
        return weights

    def _top_layer_params(self) -> list[Tensor]:
        """``W`` of GradNorm: the trainable model tensors of the highest adapted layer (all if none is in a layer)."""
        params = self.selection.meta_params(self.model)
        layers = {n: self.selection.layer_of[n] for n in params if n in self.selection.layer_of}
        if not layers:
            return list(params.values())
        top = max(layers.values())
        return [params[n] for n, i in layers.items() if i == top]

    def _aggregate(self, names: list[str], losses: Tensor) -> None:
        """Aggregate the Jacobian of ``losses`` w.r.t. the model's trainable tensors with torchjd; task
        heads get their own task's gradient (divided by T, like the mean)."""
        from torchjd.autojac import backward, jac_to_grad

        if len(names) not in self._aggregators:
            self._aggregators[len(names)] = build_aggregator(self.config.weighting, self.config.options, len(names))
        shared = list(self.selection.meta_params(self.model).values())
        heads = [(i, [self.task_params[f"head/{n}/{k}"] for k in ("weight", "bias")])
                 for i, n in enumerate(names) if n in self.head_labels]
        for i, params in heads:
            grads = torch.autograd.grad(losses[i] / len(names), params, retain_graph=True)
            for p, g in zip(params, grads, strict=True):
                p.grad = g if p.grad is None else p.grad + g
        backward(list(losses), inputs=shared, parallel_chunk_size=1)
        jac_to_grad(shared, self._aggregators[len(names)])

    def _record(self, names: list[str], losses: Tensor) -> None:
        for n, loss in zip(names, losses.tolist(), strict=True):
            past = self.history.get(n, [])
            if self.config.weighting == "gradnorm":
                self.history[n] = past or [loss]
            elif self.config.weighting == "dwa":
                self.history[n] = [*past, loss][-2:]
