"""What every meta-learning algorithm shares: the outer step and the algorithm registry.

An algorithm is a small outer step on the one inner loop (:func:`metalm.adapt`): a
:class:`MetaLearner` subclass computes a meta-batch's meta-gradients, and :meth:`MetaLearner.step`
(the one outer-step implementation, the trainer's too) applies them. Each algorithm registers
under a name with its config dataclass; a variant that only changes the config (FOMAML, ANIL,
Meta-SGD, MAML++ are MAML's) registers the same class under its own name and config.
:func:`build_algorithm` builds one by name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..batching import TaskGroups
from ..config import InnerConfig, from_dict
from ..data.episode import Episode
from ..errors import ConfigError
from ..inner import LearningRate, LossFn
from ..losses import Batch, compiled_lm_loss, lm_loss, reusable_batch
from ..params import ParameterSelection
from ..sharding import clip_grad_norm_, grads_health

_REGISTRY: dict[str, tuple[type[MetaLearner], type]] = {}


def register_algorithm(name: str, config_cls: type) -> Callable[[type[MetaLearner]], type[MetaLearner]]:
    """Class decorator registering a :class:`MetaLearner` under ``name`` with its config dataclass.

    The same class may be registered under several names with different configs (a variant)::

        register_algorithm("fomaml", FOMAMLConfig)(MAML)

    Raises:
        ValueError: If ``name`` is already registered.
    """

    def deco(cls: type[MetaLearner]) -> type[MetaLearner]:
        if not (isinstance(cls, type) and issubclass(cls, MetaLearner)):
            raise TypeError(f"algorithm {name!r}: {cls!r} is not a MetaLearner subclass")
        if name in _REGISTRY:
            raise ValueError(f"algorithm {name!r} is already registered (by {_REGISTRY[name][0].__name__})")
        _REGISTRY[name] = (cls, config_cls)
        return cls

    return deco


def algorithm_names() -> list[str]:
    """Names of the registered algorithms."""
    return sorted(_REGISTRY)


def row_kinds() -> list[str]:
    """The evaluation rows trained runs can give (:attr:`MetaLearner.row`), in registration order: what
    ``metalm eval --methods`` accepts beside the baselines."""
    return list(dict.fromkeys(cls.row for cls, _ in _REGISTRY.values()))


def algorithms_of_row(row: str) -> list[str]:
    """The registered algorithms whose trained runs give the evaluation row ``row``."""
    return sorted(name for name, (cls, _) in _REGISTRY.items() if cls.row == row)


def sharded_algorithms() -> list[str]:
    """Registered algorithms whose default config runs on a sharded base (``distributed: fsdp``), as
    each declares it: no double backward (:meth:`MetaLearner.needs_double_backward`) and nothing
    refused by :meth:`MetaLearner.check_sharded`."""
    out = []
    for name in algorithm_names():
        cls, config = algorithm_class(name), algorithm_config(name)
        if cls.needs_double_backward(config):
            continue
        try:
            cls.check_sharded(config)
        except ConfigError:
            continue
        out.append(name)
    return out


def _lookup(name: str) -> tuple[type[MetaLearner], type]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError("algorithm.name", f"unknown algorithm {name!r} (known: {', '.join(algorithm_names())})")
    return _REGISTRY[name]


def algorithm_config(name: str, data: Mapping[str, Any] | None = None, *, source: str | None = None) -> Any:
    """The validated config of algorithm ``name``, filled from ``data`` (defaults for missing fields).

    Raises:
        ConfigError: Naming the field, for a bad value or an option the algorithm declares it cannot run
            (``inner.vmap`` where :attr:`MetaLearner.vmaps_tasks` is false).
    """
    cls, config_cls = _lookup(name)
    config = from_dict(config_cls, dict(data or {}), source=source, prefix="algorithm")
    inner = getattr(config, "inner", None)
    if inner is not None and inner.vmap and not cls.vmaps_tasks:
        raise ConfigError("algorithm.inner.vmap", f"{name} does not run its tasks under torch.func.vmap (its outer "
                                                  "step takes them one by one); set it to false")
    return config


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
    learner = cls(model, selection, config)
    learner.name = name
    return learner


class MetaLearner:
    """An outer step: the meta-parameters, the state to checkpoint, and :meth:`step`.

    Subclasses implement :meth:`meta_gradients`. The meta-parameters are the fast weights'
    initialization (the model's own tensors), the shared base weights the selection names, and any
    learned inner learning rates (owned here). Evaluating an initialization is evaluation's job
    (:func:`metalm.eval.query_metrics`, :class:`metalm.eval.Harness`); grouping tasks for ``vmap``
    is :class:`metalm.batching.TaskGroups`'s; when to cache a frozen prefix is
    :func:`metalm.losses.reusable_batch`'s.

    Args:
        model: The (adapter-wrapped) causal LM; ``requires_grad`` is set from ``selection``.
        selection: Which tensors are fast and shared.
        config: The algorithm's config dataclass (has at least ``inner: InnerConfig``). A config
            with a ``check_selection(selection)`` method has it called first (ANIL's rule).
    """

    name: str = ""  #: the registered name it was built under (:func:`build_algorithm`)
    #: Evaluation's row of a trained run (:func:`metalm.run.run_kind`): ``meta`` (an initialization the
    #: inner loop adapts), ``mtl`` (multi-task weights), ``hyper`` (weights generated from the support set),
    #: ``library`` (a LoRA library composed for the support set).
    row: ClassVar[str] = "meta"
    #: Whether several runs of this row are told apart by their algorithm's name (``meta:maml``,
    #: ``meta:reptile``); else by their run folder.
    row_names_algorithm: ClassVar[bool] = True
    #: Whether its inner loop is the one the rows of inner-loop-less runs (:attr:`borrows_inner`) adapt
    #: with when evaluated beside it (the first such run's), so both adapt alike.
    lends_inner: ClassVar[bool] = True
    #: Whether its trained weights have no inner loop of their own to adapt with (multi-task weights):
    #: evaluated beside a run that :attr:`lends_inner`, they adapt with that run's.
    borrows_inner: ClassVar[bool] = False
    #: Whether a new task's starting weights are written from its support set (:meth:`generators`).
    amortized: ClassVar[bool] = False
    #: Whether its outer step runs a meta-batch's tasks through :meth:`run_tasks` (together under
    #: ``torch.func.vmap`` with ``inner.vmap``); the others refuse ``inner.vmap``.
    vmaps_tasks: ClassVar[bool] = False

    @classmethod
    def evaluation(cls, config: Any) -> dict[str, Any]:
        """How evaluation uses a trained initialization of this algorithm: ``adapt`` it with the inner
        loop or not, and present its ``queries`` alone (``plain``) or after the support set as
        demonstrations (``direct``, ``channel``), as training presented them (the config's
        ``queries``: one name from the YAML to :class:`metalm.eval.Init`)."""
        return {"adapt": True, "queries": getattr(config, "queries", "plain")}

    @classmethod
    def needs_double_backward(cls, config: Any) -> bool:
        """Whether the outer step differentiates through gradients (second-order meta-gradients; FSDP
        cannot run it): by default, when the config's inner loop is not first-order."""
        inner = getattr(config, "inner", None)
        return inner is not None and not inner.first_order

    @classmethod
    def check_sharded(cls, config: Any) -> None:
        """Refuse, with a :class:`~metalm.errors.ConfigError` naming the field, a config this algorithm
        cannot run on a base model sharded across processes (``distributed: fsdp``), beyond what
        :func:`metalm.sharding.check_algorithm` refuses for every algorithm. Nothing by default."""

    def generators(self, values: Mapping[str, Tensor]) -> dict[str, Callable[..., dict[str, Tensor]]]:
        """Algorithms that write a new task's fast weights from its support set (a hypernetwork, a
        composition of a LoRA library): ``generate(support, frozen) -> fast weights`` from the
        meta-parameter ``values``, by evaluation row suffix (``""``: the row itself; ``-hub``, ...);
        :class:`metalm.eval.Init`'s ``generate``. Empty for an initialization the inner loop adapts
        as it is."""
        return {}

    def routers(self, values: Mapping[str, Tensor]) -> dict[str, Callable[[], Any]]:
        """Algorithms that change the forward pass for a new task (a LoRA library's Arrow routing): a
        context manager factory by evaluation row suffix, under which the row's standard-initialization
        weights are scored (:class:`metalm.eval.Init`'s ``route``). Empty for the others."""
        return {}

    def export(self, out: Path, base_ref: str) -> list[str]:
        """Write what an exported run of this algorithm holds beyond the adapter, shared weights and
        learned inner rates (:func:`metalm.report.export_run`) into ``out``, with the model's
        tensors holding the trained values; ``base_ref`` names the base model portably. Returns the
        names written (nothing by default)."""
        return []

    @property
    def queries(self) -> str:
        """How the trainer presents an episode's queries (:func:`metalm.data.tensorize`'s ``queries``)."""
        return self.evaluation(self.config)["queries"]

    def __init__(self, model: nn.Module, selection: ParameterSelection, config: Any) -> None:
        check = getattr(config, "check_selection", None)
        if check is not None:
            check(selection)
        self.model, self.selection, self.config = model, selection, config
        self.inner: InnerConfig = config.inner
        selection.apply(model)
        # Layers below this one never change (not adapted, not meta-learned): cacheable per batch.
        self.prefix_layer = selection.lowest_adapted_layer() if self.inner.cache_prefix else None
        self.inner_lrs: dict[str, nn.Parameter] = {}
        self.outer_steps = 0
        self.tasks = TaskGroups(model, self.inner.vmap, self.inner.vmap_chunk or 0)

    @property
    def vmap_failure(self) -> str | None:
        """Why ``vmap`` over tasks did not run (then tasks are looped), or ``None``."""
        return self.tasks.failure

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

    # ------------------------------------------------------------------ helpers of meta_gradients
    def inner_loss(self, first_order: bool) -> LossFn:
        """The support loss of the inner loop: :func:`metalm.lm_loss`, compiled
        (:func:`metalm.losses.compiled_lm_loss`) for first-order loops when ``inner.compile`` is set."""
        return compiled_lm_loss() if self.inner.compile and first_order else lm_loss

    def prefixed(self, batch: Batch, uses: int | None = None) -> Batch:
        """``batch`` for ``uses`` passes (default: the inner steps), :func:`metalm.losses.reusable_batch`."""
        return reusable_batch(self.model, batch, self.prefix_layer, self.inner.steps if uses is None else uses)

    def run_tasks(self, fn: Callable[[Batch, Batch], Any], episodes: Sequence[Episode]) -> Iterator[Any]:
        """``fn(support, query)`` for the episodes, stacked along a leading task dim (:attr:`tasks`)."""
        return self.tasks(fn, episodes)

    # ------------------------------------------------------------------ outer step
    def meta_gradients(self, episodes: Sequence[Episode]) -> dict[str, float]:
        """Accumulate the meta-gradient of a meta-batch into ``.grad`` of :meth:`meta_parameters`.

        Gradients are averaged over the episodes and *added* to existing ``.grad`` (so a trainer
        can accumulate several meta-batches). Returns metrics averaged over the episodes.
        """
        raise NotImplementedError

    def step(self, episodes: Sequence[Episode] | Iterable[Sequence[Episode]], optimizer: torch.optim.Optimizer, *,
             clip_grad_norm: float | None = None,
             sync: Callable[[list[Tensor], dict[str, float]], dict[str, float]] | None = None,
             autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
             ) -> dict[str, float]:
        """One outer step: zero the gradients, accumulate the meta-gradients, step ``optimizer``.

        The step is skipped (no update) when a meta-gradient or metric is NaN or infinite, or when
        the meta-gradient is exactly zero everywhere (nothing to learn from; an optimizer with
        momentum or weight decay would still move the weights); the outer-step counter advances
        either way.

        Args:
            episodes: One meta-batch, or an iterable of meta-batches (drawn lazily) whose
                meta-gradients are averaged: gradient accumulation, equal to one meta-batch of all
                their episodes when they are the same size.
            optimizer: The outer optimizer over :meth:`meta_parameters`.
            clip_grad_norm: Clip the meta-gradient's global norm (reported as ``grad_norm``).
            sync: Called with the meta-parameters and the metrics after accumulation; returns the
                metrics to report (the trainer averages gradients and metrics over processes here).
            autocast: Context for computing the meta-gradients (the trainer's bf16 autocast on CUDA).

        Returns:
            The metrics averaged over the meta-batches (a key reported by some of them, such as a
            multi-task weight of a task drawn in one, is summed over them / their number),
            ``grad_norm`` when clipping, and
            ``skipped``: 1.0 when the step was not applied for a non-finite value, else 0.0;
            ``zero_grad``: 1.0 when it was not applied because the meta-gradient was exactly zero.
        """
        batches = [episodes] if isinstance(episodes, Sequence) and episodes and isinstance(episodes[0], Episode) \
            else list(episodes) if isinstance(episodes, Sequence) else episodes
        params = list(self.meta_parameters().values())
        optimizer.zero_grad(set_to_none=True)
        parts: list[dict[str, float]] = []
        for batch in batches:
            if isinstance(batch, Episode) or not batch:
                raise ConfigError("episodes", "a meta-batch needs at least one episode: pass a list of episodes, "
                                              "or an iterable of lists of episodes (gradient accumulation)")
            with autocast():
                parts.append(self.meta_gradients(batch))
        if not parts:
            raise ConfigError("episodes", "an outer step needs at least one meta-batch")
        metrics: dict[str, float] = {}  # a key missing from a meta-batch (a per-task weight) counts as 0
        for m in parts:
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + v / len(parts)
        if len(parts) > 1:
            for p in params:
                if p.grad is not None:
                    p.grad.div_(len(parts))
        if sync is not None:
            metrics = sync(params, metrics)
        self.outer_steps += 1
        finite_grads, zero = grads_health(params)
        if not (finite_grads and all(math.isfinite(v) for v in metrics.values())):
            return {**metrics, "skipped": 1.0, "zero_grad": 0.0}
        if zero:
            return {**metrics, "grad_norm": 0.0, "skipped": 0.0, "zero_grad": 1.0}
        if clip_grad_norm is not None:
            metrics["grad_norm"] = clip_grad_norm_(params, clip_grad_norm)
        optimizer.step()
        return {**metrics, "skipped": 0.0, "zero_grad": 0.0}

    def state_dict(self) -> dict[str, Any]:
        """The algorithm's state besides its tensors, JSON-serializable (checkpoints store it as
        ``state.json``'s ``algorithm``): the outer-step counter, plus what a subclass adds. Tensors,
        learned inner rates included, are :meth:`meta_parameters`."""
        return {"outer_steps": self.outer_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.outer_steps = int(state["outer_steps"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {dataclasses.asdict(self.config)})"

