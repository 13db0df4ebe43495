"""What every meta-learning algorithm shares: the learner object and the algorithm registry.

An algorithm is a small outer step on the one inner loop (:func:`metalm.adapt`). Each registers
under a name with its config dataclass; :func:`build_algorithm` builds one by name.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from ..batching import is_vmap_error, stack_batches, vmap_tasks
from ..config import InnerConfig, from_dict
from ..data.episode import Episode
from ..errors import ConfigError
from ..inner import LearningRate, LossFn, adapt
from ..losses import Batch, cache_prefix, lm_loss, lm_loss_and_accuracy, prepare_batch
from ..params import ParameterSelection

_REGISTRY: dict[str, tuple[type[MetaLearner], type]] = {}


def register_algorithm(name: str, config_cls: type) -> Callable[[type[MetaLearner]], type[MetaLearner]]:
    """Class decorator registering a :class:`MetaLearner` under ``name`` with its config dataclass.

    Raises:
        ValueError: If ``name`` is already registered.
    """

    def deco(cls: type[MetaLearner]) -> type[MetaLearner]:
        if name in _REGISTRY:
            raise ValueError(f"algorithm {name!r} is already registered (by {_REGISTRY[name][0].__name__})")
        _REGISTRY[name] = (cls, config_cls)
        return cls

    return deco


def algorithm_names() -> list[str]:
    """Names of the registered algorithms."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> tuple[type[MetaLearner], type]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError("algorithm.name", f"unknown algorithm {name!r} (known: {', '.join(algorithm_names())})")
    return _REGISTRY[name]


def algorithm_config(name: str, data: Mapping[str, Any] | None = None, *, source: str | None = None) -> Any:
    """The validated config of algorithm ``name``, filled from ``data`` (defaults for missing fields)."""
    _, config_cls = _lookup(name)
    return from_dict(config_cls, dict(data or {}), source=source, prefix="algorithm")


def algorithm_class(name: str) -> type[MetaLearner]:
    """The :class:`MetaLearner` class registered as ``name``."""
    return _lookup(name)[0]


def build_algorithm(name: str, model: nn.Module, selection: ParameterSelection, config: Any = None) -> MetaLearner:
    """Build the algorithm registered as ``name`` on ``model`` with the given parameter selection.

    Args:
        name: A registered name (see :func:`algorithm_names`).
        model: The (adapter-wrapped) causal LM.
        selection: Fast and shared weights, from :func:`metalm.select_parameters`.
        config: The algorithm's config dataclass, or a dict for :func:`algorithm_config`, or ``None``.
    """
    cls, config_cls = _lookup(name)
    if config is None or isinstance(config, Mapping):
        config = algorithm_config(name, config)
    elif not isinstance(config, config_cls):
        raise ConfigError("algorithm", f"{name!r} takes a {config_cls.__name__}, got {type(config).__name__}")
    return cls(model, selection, config)


class MetaLearner:
    """State and helpers shared by the algorithms; subclasses implement :meth:`meta_gradients`.

    The meta-parameters are the fast weights' initialization (the model's own tensors), the shared
    base weights the selection names, and any learned inner learning rates (owned here).

    Args:
        model: The (adapter-wrapped) causal LM; ``requires_grad`` is set from ``selection``.
        selection: Which tensors are fast and shared.
        config: The algorithm's config dataclass (has at least ``inner: InnerConfig``).
    """

    name: ClassVar[str] = ""

    @classmethod
    def scoring(cls, config: Any) -> dict[str, Any]:
        """How evaluation uses a trained initialization of this algorithm: ``adapt`` it with the inner
        loop or not, and score its queries alone (``icl: plain``) or after the support set as
        demonstrations (``direct``, ``channel``), as training presented them."""
        return {"adapt": True, "icl": getattr(config, "queries", "plain")}

    @property
    def query_rows(self) -> str:
        """How the trainer writes an episode's query rows (:func:`metalm.data.tensorize`)."""
        return self.scoring(self.config)["icl"]

    def __init__(self, model: nn.Module, selection: ParameterSelection, config: Any) -> None:
        self.model, self.selection, self.config = model, selection, config
        self.inner: InnerConfig = config.inner
        selection.apply(model)
        # Layers below this one never change (not adapted, not meta-learned): cacheable per batch.
        self.prefix_layer = selection.lowest_adapted_layer() if self.inner.cache_prefix else None
        self.inner_lrs: dict[str, nn.Parameter] = {}
        self.outer_steps = 0
        self.vmap_failure: str | None = None  # why vmap over tasks did not run (then the loop is used)
        self._compiled_loss: LossFn | None = None

    # ------------------------------------------------------------------ parameters
    def meta_parameters(self) -> dict[str, Tensor]:
        """Every tensor the outer optimizer updates, by name (``inner_lr/NAME`` for learned rates)."""
        out: dict[str, Tensor] = dict(self.selection.meta_params(self.model))
        out.update({f"inner_lr/{n}": p for n, p in self.inner_lrs.items()})
        return out

    def inner_lr(self) -> LearningRate:
        """The inner learning rate: the configured float, or the learned per-parameter tensors."""
        return self.inner_lrs if self.inner_lrs else self.inner.lr

    def _init_learned_lrs(self, per: str, per_step: bool) -> None:
        """Create learned inner rates initialized to ``inner.lr``: one per tensor or per element,
        optionally one per step (Meta-SGD, Li et al. 2017; MAML++ LSLR, Antoniou et al. 2019)."""
        for n, p in self.selection.fast_params(self.model).items():
            shape = tuple(p.shape) if per == "per_element" else (1,) * p.dim()
            if per_step:
                shape = (self.inner.steps, *shape)
            self.inner_lrs[n] = nn.Parameter(torch.full(shape, self.inner.lr, dtype=p.dtype, device=p.device))

    def bind_tasks(self, tasks: Sequence[Any]) -> None:
        """Create per-task meta-parameters for the training tasks (``Task`` objects); the trainer calls
        it before building the outer optimizer. The meta-learners have none."""

    def extra_state(self) -> dict[str, Any]:
        """JSON-serializable algorithm state besides tensors (saved in checkpoints)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    # ------------------------------------------------------------------ adaptation
    def inner_loss(self, first_order: bool) -> LossFn:
        """The support loss of the inner loop: :func:`metalm.lm_loss`, through ``torch.compile``
        (built once, dynamic shapes) for first-order loops when ``inner.compile`` is set."""
        if not (self.inner.compile and first_order):
            return lm_loss
        if self._compiled_loss is None:
            self._compiled_loss = torch.compile(lm_loss, dynamic=True)
        return self._compiled_loss

    def prefixed(self, batch: Batch, uses: int | None = None) -> Batch:
        """``batch`` with a frozen-prefix cache when it will be run ``uses`` times (default: the inner
        steps) and ``uses >= 2``; a single pass gains nothing from a cache."""
        if (self.inner.steps if uses is None else uses) < 2:
            return prepare_batch(batch)  # target positions found once, outside any compiled loss
        return cache_prefix(self.model, batch, self.prefix_layer)

    def run_tasks(self, fn: Callable[[Batch, Batch], Any], episodes: Sequence[Episode]) -> Iterator[Any]:
        """Yield ``fn(support, query)`` for the episodes, outputs stacked along a leading task dim.

        With ``inner.vmap``, the episodes with the same numbers of support and query rows (a
        classification task's N-way K-shot episode has N*K support rows, other tasks' K) run
        together under ``torch.func.vmap`` (:mod:`metalm.batching`), ``inner.vmap_chunk`` at a
        time (default: all); a lone episode, or a group that cannot (see :meth:`vmapped`), runs
        one task at a time (a task dim of 1). A consumer that runs ``backward`` on each item
        before taking the next keeps one group's graph alive at a time.
        """
        shapes: dict[tuple[int, int], list[Episode]] = {}
        for ep in episodes:
            key = (ep.support["input_ids"].shape[0], ep.query["input_ids"].shape[0]) if self.inner.vmap else (0, 0)
            shapes.setdefault(key, []).append(ep)
        size = (self.inner.vmap_chunk or len(episodes)) if self.inner.vmap else 1
        for same in shapes.values():
            for start in range(0, len(same), size):
                group = same[start:start + size]
                stacked = self.vmapped(fn, group)
                if stacked is not None:
                    yield stacked
                    continue
                for ep in group:
                    yield tree_map(lambda t: t.unsqueeze(0), fn(ep.support, ep.query))

    def vmapped(self, fn: Callable[[Batch, Batch], Any], episodes: Sequence[Episode]) -> Any | None:
        """``fn(support, query)`` run for every episode at once under ``torch.func.vmap``.

        Returns ``fn``'s outputs stacked along a leading task dimension, or ``None`` when the
        caller should loop instead: ``inner.vmap`` is off, there is a single episode, the
        episodes' row counts differ, or the model does not run under ``vmap`` (warned once, with
        the reason kept in :attr:`vmap_failure`; later steps loop).
        """
        if not self.inner.vmap or self.vmap_failure is not None or len(episodes) < 2:
            return None
        supports = stack_batches([ep.support for ep in episodes], self.model)
        queries = stack_batches([ep.query for ep in episodes], self.model)
        if supports is None or queries is None:
            return None
        try:
            return vmap_tasks(fn, supports, queries)
        except (RuntimeError, NotImplementedError) as err:
            if not is_vmap_error(err):
                raise
            self.vmap_failure = str(err).splitlines()[0][:300]
            warnings.warn(f"inner.vmap: this model does not run under torch.func.vmap ({self.vmap_failure}); "
                          "running the tasks one by one", RuntimeWarning, stacklevel=3)
            return None

    def adapt(self, support: Batch, *, steps: int | None = None) -> dict[str, Tensor]:
        """Adapt the learned initialization to ``support`` for evaluation (no meta-graph kept).

        Uses the same inner loop, update rule and (learned) rates as training. Returns detached
        fast weights.
        """
        params = {n: p.detach() for n, p in self.selection.fast_params(self.model).items()}
        lr = self.inner_lr()
        lr = {n: v.detach() for n, v in lr.items()} if isinstance(lr, dict) else lr
        steps = self.inner.steps if steps is None else steps
        out = adapt(self.model, params, self.prefixed(support, steps), lr=lr, first_order=True,
                    loss_fn=self.inner_loss(True), **{**self.inner.options(), "steps": steps})
        return {n: v.detach() for n, v in out.items()}

    def evaluate(self, episode: Episode) -> dict[str, float]:
        """Adapt on the episode's support set and score its query set (loss and token accuracy)."""
        adapted = self.adapt(episode.support)
        with torch.no_grad():
            loss, acc = lm_loss_and_accuracy(self.model, adapted, episode.query)
        return {"query_loss": float(loss), "query_accuracy": float(acc)}

    # ------------------------------------------------------------------ outer step
    def meta_gradients(self, episodes: Sequence[Episode]) -> dict[str, float]:
        """Accumulate the meta-gradient of a meta-batch into ``.grad`` of :meth:`meta_parameters`.

        Gradients are averaged over the episodes and *added* to existing ``.grad`` (so a trainer
        can accumulate several meta-batches). Returns metrics averaged over the episodes.
        """
        raise NotImplementedError

    def step(self, episodes: Sequence[Episode], optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One outer step: zero the gradients, compute the meta-gradients, step ``optimizer``."""
        if not episodes:
            raise ConfigError("episodes", "a meta-batch needs at least one episode")
        optimizer.zero_grad(set_to_none=True)
        metrics = self.meta_gradients(episodes)
        optimizer.step()
        self.outer_steps += 1
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Algorithm state besides the model: learned rates and the outer-step counter."""
        lrs = {n: p.detach().clone() for n, p in self.inner_lrs.items()}
        return {"outer_steps": self.outer_steps, "inner_lrs": lrs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.outer_steps = int(state["outer_steps"])
        missing = set(self.inner_lrs) ^ set(state["inner_lrs"])
        if missing:
            raise ConfigError("inner_lrs", f"learned rates do not match this model: {sorted(missing)[:3]}")
        with torch.no_grad():
            for n, v in state["inner_lrs"].items():
                self.inner_lrs[n].copy_(v)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dataclasses.asdict(self.config)})"
