"""Initializations as values: what evaluation adapts from, passed to the inner loop, never copied into a model.

An :class:`Init` holds the fast weights' starting values, the shared weights to use unchanged
(``frozen``: a trained run's outer-loop-only weights), and the inner loop that adapts them
(steps, optimizer, learning rate or learned rates). Evaluation calls :func:`metalm.adapt` with these
tensors directly, so several initializations (the pretrained one, a meta-learned one, a multi-task
one) are scored on the same model object, episode by episode, without swapping weights in and out.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_like
from ..config import InnerConfig
from ..errors import ConfigError
from ..inner import LearningRate, UpdateRule, adapt
from ..losses import Batch, lm_loss_and_accuracy, reusable_batch
from ..sharding import is_sharded


@dataclasses.dataclass
class Init:
    """Where adaptation starts and how it proceeds.

    Attributes:
        fast: Starting values of the fast weights, by ``model.named_parameters()`` name (detached).
        inner: The inner loop (steps, optimizer, clipping; ``inner.lr`` unless ``lr`` is set).
        frozen: Shared weights used instead of the model's own, not adapted (detached).
        lr: Learned inner rates (a dict of tensors, Meta-SGD / MAML++), or ``None`` for ``inner.lr``.
        adapt: Run the inner loop (``False``: score the starting values, as MetaICL's row).
        queries: Present the queries alone (``plain``) or after the support set as demonstrations
            (``direct`` or ``channel``), as the run was trained (its algorithm config's ``queries``).
        calibrate: Divide the option probabilities by their mean over content-free inputs
            (Zhao et al. 2021), as ``zeroshot-cal`` / ``icl-cal`` do; not for ``channel`` scoring.
        generate: Amortized adaptation (:class:`metalm.algorithms.HyperLoRA`): ``generate(support,
            frozen)`` writes the starting fast weights from the support batch (``fast`` is then the
            hypernetwork's ``θ_0``); ``None``: adaptation starts from ``fast``.
        route: A factory of a context manager that changes the forward pass while the row is scored
            (a LoRA library's Arrow routing, :class:`metalm.algorithms.library.ArrowRouting`); such a
            row does not adapt.
    """

    fast: dict[str, Tensor]
    inner: InnerConfig
    frozen: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    lr: LearningRate | None = None
    adapt: bool = True
    queries: str = "plain"
    calibrate: bool = False
    generate: Callable[[Batch, Mapping[str, Tensor]], dict[str, Tensor]] | None = None
    route: Callable[[], contextlib.AbstractContextManager[Any]] | None = None

    def scoring(self) -> contextlib.AbstractContextManager[Any]:
        """The context to score this row in: its routing, or nothing."""
        return self.route() if self.route is not None else contextlib.nullcontext()

    def start(self, support: Batch) -> dict[str, Tensor]:
        """The fast weights adaptation starts from on this support batch: generated from it, or ``fast``."""
        if self.generate is None:
            return self.fast
        return {k: v.detach() for k, v in self.generate(support, self.frozen).items()}

    def rate(self) -> LearningRate:
        """The inner learning rate to pass to :func:`metalm.adapt`."""
        return self.inner.lr if self.lr is None else self.lr

    def params(self, fast: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Every tensor to score with: the frozen ones and ``fast`` (default: the starting values)."""
        return {**self.frozen, **(self.fast if fast is None else fast)}

    def with_budget(self, optimizer: str, lr: float, steps: int) -> Init:
        """The same starting point adapted by another inner loop (a plain rate, no learned rates, no
        proximal term): fine-tuning's budget is the same for every starting point."""
        inner = dataclasses.replace(self.inner, optimizer=optimizer, lr=lr, steps=steps, proximal=0.0)
        return dataclasses.replace(self, inner=inner, lr=None, adapt=True)

    def same_budget(self, other: Init) -> bool:
        """Whether both adapt with the same steps, optimizer and plain rate."""
        a, b = self.inner, other.inner
        return (a.steps, a.optimizer, a.lr, a.proximal, self.lr is None, self.adapt) == \
            (b.steps, b.optimizer, b.lr, b.proximal, other.lr is None, other.adapt) and \
            (self.generate is None) == (other.generate is None)


def adapted_params(model: nn.Module, init: Init, support: Batch, *, steps: int | None = None) -> dict[str, Tensor]:
    """Every tensor to score with after adapting ``init`` to ``support`` (detached; no meta-graph).

    The inner loop of ``init`` (its steps unless ``steps`` is given, its learned rates) runs
    first-order from ``init.start(support)`` (``init.fast``, or the weights generated from ``support``)
    with ``init.frozen`` passed, never written into ``model``; an ``init`` that does not adapt
    (``init.adapt`` false: MetaICL's, HyperLoRA's) gives its starting values.
    """
    start = init.start(support)
    if not init.adapt:
        return init.params(start)
    rule = UpdateRule.of(init.inner, lr=init.rate(), first_order=True, **({} if steps is None else {"steps": steps}))
    out = adapt(model, start, support, rule, frozen=init.frozen, recompute=init.inner.recompute)
    return init.params({k: v.detach() for k, v in out.items()})


def query_metrics(model: nn.Module, init: Init, episode: Any, prefix_layer: int | None = None) -> dict[str, float]:
    """Adapt ``init`` on a tokenized episode's support set and score its query set: the mean query
    loss and token accuracy (the trainer's validation, the demo's evaluation).

    Args:
        model: The model ``init``'s tensors belong to.
        init: Where adaptation starts and how (:func:`init_of` for a learner's current values).
        episode: A tokenized :class:`metalm.data.Episode` (``support``, ``query`` batches).
        prefix_layer: The lowest layer holding a fast or shared weight: layers below it are run
            once for all inner steps (:func:`metalm.losses.reusable_batch`); ``None``: no cache.
    """
    uses = (init.inner.steps if init.adapt else 0) + (init.generate is not None)
    support = reusable_batch(model, episode.support, prefix_layer, uses)
    params = adapted_params(model, init, support)
    with torch.no_grad():
        loss, acc = lm_loss_and_accuracy(model, params, episode.query)
    return {"query_loss": float(loss), "query_accuracy": float(acc)}


def init_of(learner: Any, *, trained: bool = True) -> Init:
    """The current initialization of a :class:`metalm.algorithms.MetaLearner` (detached copies).

    ``trained``: adapt and score it as the learner's training did (learned rates, in-context
    queries, no adaptation for MetaICL); ``False``: the plain inner loop of a pretrained start.
    """
    named = dict(learner.model.named_parameters())
    # A sharded shared weight (distributed: fsdp) is not copied: the model's own value is the current one,
    # and FSDP gathers it for each forward (a swapped-in shard would not be).
    values = {n: named[n] for n in (*learner.selection.fast, *learner.selection.shared) if not is_sharded(named[n])}
    # The learner's own meta-parameters: learned rates (inner_lr/...), a hypernetwork (hyper/...).
    values.update({n: p for n, p in learner.meta_parameters().items() if n not in named})
    return init_from_values(learner, {k: v.detach().clone() for k, v in values.items()}, trained=trained)


def check_values(learner: Any, values: Any, argument: str) -> None:
    """``values`` holds a tensor for each of ``learner``'s fast weights, each value of a meta-parameter
    name with that tensor's shape and dtype (extra names are ignored).

    Raises:
        ConfigError: Naming ``argument`` and the tensor at fault.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(argument, "must be a dict of tensors by meta-parameter name (MetaLearner.meta_parameters()), "
                                    f"got {type(values).__name__}")
    missing = [n for n in learner.selection.fast if n not in values]
    if missing:
        raise ConfigError(argument, f"has no value for fast weight {missing[0]!r} ({len(missing)} missing)")
    own = learner.meta_parameters()
    for name, value in values.items():
        if name in own:
            check_like(value, own[name], f"{argument}[{name}]", "the meta-parameter's")


def init_from_values(learner: Any, values: Mapping[str, Tensor], *, trained: bool = True,
                     generators: Mapping[str, Callable[..., Any]] | None = None) -> Init:
    """An :class:`Init` from meta-parameter values by name, as :meth:`MetaLearner.meta_parameters` names
    them (``inner_lr/NAME`` for learned rates), with ``learner``'s selection and inner loop (see
    :func:`init_of` for ``trained``). A shared weight without a value is used as the model holds it.
    ``generators``: ``learner.generators(values)`` when the caller has them already (built once)."""
    sel = learner.selection
    lrs = {n[len("inner_lr/"):]: v.detach() for n, v in values.items() if n.startswith("inner_lr/")}
    init = Init({n: values[n].detach() for n in sel.fast}, learner.inner,
                {n: values[n].detach() for n in sel.shared if n in values})
    if not trained:
        return init
    generators = learner.generators(values) if generators is None else generators
    generate = next(iter(generators.values()), None)  # a library's first composition
    return dataclasses.replace(init, lr=lrs or None, generate=generate, **type(learner).evaluation(learner.config))


def trained_rows(learner: Any, values: Mapping[str, Tensor], label: str) -> dict[str, Init]:
    """A trained run's evaluation rows by name: ``label`` with the initialization of ``values``, or, for
    an algorithm with several ways of writing a new task's weights (a LoRA library's compositions),
    one row per way (``label-hub``, ``label-mean``, ``label-arrow`` ...)."""
    generators, routers = learner.generators(values), learner.routers(values)
    init = init_from_values(learner, values, generators=generators)
    if not generators and not routers:
        return {label: init}
    out = {label + suffix: dataclasses.replace(init, generate=gen) for suffix, gen in generators.items()}
    zero = {n: torch.zeros_like(v) if ".lora_B." in n else v for n, v in init.fast.items()}  # no update of its own
    out.update({label + suffix: dataclasses.replace(init, fast=zero, generate=None, route=route, adapt=False)
                for suffix, route in routers.items()})
    return out


def init_from_checkpoint(checkpoint: Any, like: Init, inner: InnerConfig,
                         evaluation: Mapping[str, Any] | None = None) -> Init | None:
    """A run's initialization from its :class:`~metalm.runtime.checkpoint.Checkpoint` without building a model.

    Returns ``None`` when the checkpoint's fast and shared weights do not have the names and shapes
    of ``like`` (another adapter or selection: the run needs a model of its own). ``evaluation``: the
    run's ``adapt`` / ``queries`` (:meth:`MetaLearner.evaluation`).
    """
    tensors, state = checkpoint.tensors, checkpoint.state
    fast, shared = list(state.get("fast", [])), list(state.get("shared", []))
    if set(fast) != set(like.fast) or set(shared) != set(like.frozen):
        return None
    values = {n: tensors[f"meta/{n}"] for n in (*fast, *shared) if f"meta/{n}" in tensors}
    if len(values) != len(fast) + len(shared) or any(
            values[n].shape != ref.shape for n, ref in {**like.fast, **like.frozen}.items()):
        return None
    lrs = {k[len("meta/inner_lr/"):]: v for k, v in tensors.items() if k.startswith("meta/inner_lr/")}
    device = next(iter(like.fast.values())).device
    return Init({n: values[n].to(device) for n in fast}, inner, {n: values[n].to(device) for n in shared},
                {n: v.to(device) for n, v in lrs.items()} or None, **dict(evaluation or {}))
