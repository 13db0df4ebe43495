"""A LoRA library: one LoRA per meta-train task, composed for a new task from its support set.

The modular family of LoraHub (Huang et al., COLM 2024, arXiv:2307.13269) and Arrow (Ostapenko et al.,
ICML 2024, arXiv:2405.11157). Training fits one LoRA per meta-train task on that task's episodes
(support and query examples alike are training examples, as in multi-task learning) in one
resumable run: the trainer's checkpoints are the library's, and ``metalm export`` writes it as one
PEFT adapter per task with a manifest. A new task gets a composition, with no inner loop:

* ``library-hub`` (LoraHub): mixing weights ``w`` over ``hub_candidates`` LoRAs drawn from the
  library, found without gradients by CMA-ES (``cma``, Hansen's reference implementation) on the
  support loss plus ``hub_l1 * mean|w|``, within ``[-hub_bound, hub_bound]``, from ``w = 0``, in
  ``hub_budget`` loss evaluations; the composed LoRA is ``A = Σ w_t A_t``, ``B = Σ w_t B_t`` (LoraHub's
  element-wise composition of each factor);
* ``library-arrow`` (Arrow): no search and no use of the support set's labels: at every LoRA layer
  each token's input ``x`` is routed to the ``arrow_top_k`` LoRAs whose prototype ``v_t`` (the top
  right singular vector of ``B_t A_t``) has the largest ``|<v_t, x>|``, weighted by the softmax of
  those values, and the layer adds ``Σ_t p_t B_t A_t x`` (times LoRA's scaling). It is a change of
  the forward pass, not a set of fast weights: evaluation scores it under the routing hooks of
  :class:`ArrowRouting`, with the adapter's own update at zero;
* ``library-mean``: the uniform mean of every LoRA of the library (the control).
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import InnerConfig
from ..data.episode import Episode
from ..errors import ConfigError
from ..losses import Batch, lm_loss, lm_loss_and_accuracy, prepare_batch
from ..models import save_peft
from ..params import ParameterSelection
from .base import MetaLearner, register_algorithm

PREFIX = "library/"


@dataclasses.dataclass
class LoRALibraryConfig:
    """Training a LoRA per task, and composing them.

    Attributes:
        inner: Unused by training and composition; the default budget of evaluation's ``@ft`` rows.
        hub_budget: Support-loss evaluations of LoraHub's search (LoraHub: 40).
        hub_candidates: LoRAs drawn from the library per new task (LoraHub: 20; 0 = every one), by a
            seed fixed by the support set's tokens.
        hub_l1: Weight of the ``mean|w|`` penalty (LoraHub: 0.05).
        hub_bound: Bound of each mixing weight (LoraHub: 1.5).
        hub_sigma: CMA-ES's initial step size.
        arrow_top_k: LoRAs each token is routed to by Arrow (Arrow: 4).
    """

    inner: InnerConfig = dataclasses.field(default_factory=lambda: InnerConfig(first_order=True))
    hub_budget: int = 40
    hub_candidates: int = 20
    hub_l1: float = 0.05
    hub_bound: float = 1.5
    hub_sigma: float = 0.5
    arrow_top_k: int = 4

    def __post_init__(self) -> None:
        if self.arrow_top_k < 1:
            raise ConfigError("algorithm.arrow_top_k", f"must be >= 1, got {self.arrow_top_k}")
        if not 2 <= self.hub_budget <= 100_000:
            raise ConfigError("algorithm.hub_budget", f"must be in 2..100000, got {self.hub_budget}")
        if self.hub_candidates < 0:
            raise ConfigError("algorithm.hub_candidates", f"must be >= 0 (0: every LoRA), got {self.hub_candidates}")
        if not (self.hub_l1 >= 0 and math.isfinite(self.hub_l1)):
            raise ConfigError("algorithm.hub_l1", f"must be finite and >= 0, got {self.hub_l1}")
        for key in ("hub_bound", "hub_sigma"):
            if not (getattr(self, key) > 0 and math.isfinite(getattr(self, key))):
                raise ConfigError(f"algorithm.{key}", f"must be finite and > 0, got {getattr(self, key)}")


def stacked(values: Mapping[str, Tensor], fast: Sequence[str]) -> tuple[list[str], dict[str, Tensor]]:
    """The library in meta-parameter ``values`` (``library/TASK/NAME``): its task names (sorted) and, per
    fast weight, the LoRAs stacked along a leading task dim ``[T, *shape]``."""
    tasks = sorted({k[len(PREFIX):].rsplit("/", 1)[0] for k in values if k.startswith(PREFIX)})
    if not tasks:
        raise ConfigError("algorithm", "the library holds no LoRA (a run trained with algorithm: lora-library)")
    return tasks, {n: torch.stack([values[f"{PREFIX}{t}/{n}"].detach() for t in tasks]) for n in fast}


def compose(library: Mapping[str, Tensor], weights: Tensor) -> dict[str, Tensor]:
    """``Σ_t w_t L_t`` for every fast weight (``library``: ``[T, *shape]``, ``weights``: ``[T]``)."""
    return {n: torch.tensordot(weights.to(v.dtype), v, dims=1) for n, v in library.items()}


def arrow_prototypes(a: Tensor, b: Tensor) -> Tensor:
    """Each LoRA's top right singular vector of ``B_t A_t`` (Arrow's prototype), ``[T, in]``, from the
    factors ``a`` ``[T, r, in]`` and ``b`` ``[T, out, r]`` without forming ``B A``: with ``A^T = Q R``,
    ``B A = (B R^T) Q^T``, so the right singular vectors are ``Q`` times those of the small ``B R^T``."""
    q, r = torch.linalg.qr(a.transpose(1, 2))  # [T, in, r], [T, r, r]
    _, _, vh = torch.linalg.svd(b @ r.transpose(1, 2), full_matrices=False)  # vh: [T, r, r]
    return (q @ vh[:, 0, :].unsqueeze(-1)).squeeze(-1)


class ArrowRouting:
    """A context in which every LoRA layer of ``model`` adds Arrow's routed update of a library (module
    doc): forward hooks on the PEFT LoRA layers, removed on exit. The adapter's own update should be
    zero meanwhile (LoRA's standard initialization, ``B = 0``).

    Args:
        model: The PEFT-wrapped model.
        library: Fast-weight name -> the library's values ``[T, *shape]`` (:func:`stacked`).
        top_k: LoRAs each token is routed to.
    """

    def __init__(self, model: nn.Module, library: Mapping[str, Tensor], top_k: int) -> None:
        self.model, self.top_k = model, top_k
        self.experts: dict[str, tuple[Tensor, Tensor, Tensor, float]] = {}
        for name, a in library.items():
            if ".lora_A." not in name:
                continue
            module_name, rest = name.split(".lora_A.", 1)
            adapter = rest.split(".")[0]
            b = library[name.replace(".lora_A.", ".lora_B.")]
            scaling = float(model.get_submodule(module_name).scaling[adapter])
            self.experts[module_name] = (a, b, arrow_prototypes(a.double(), b.double()).to(a.dtype), scaling)
        if not self.experts:
            raise ConfigError("adapter.kind", "Arrow routes LoRA layers; the library holds none")
        self._handles: list[Any] = []

    def delta(self, module_name: str, x: Tensor) -> Tensor:
        """The routed update of one layer for inputs ``x`` ``[..., in]`` -> ``[..., out]``."""
        a, b, v, scaling = (t.to(x.dtype) if isinstance(t, Tensor) else t for t in self.experts[module_name])
        logits = (x @ v.T).abs()  # [..., T]
        top, idx = logits.topk(min(self.top_k, v.shape[0]), dim=-1)
        p = torch.zeros_like(logits).scatter(-1, idx, top.softmax(-1))
        ax = torch.einsum("...i,tri->...tr", x, a) * p.unsqueeze(-1)  # [..., T, r]
        return torch.einsum("...tr,tor->...o", ax, b) * scaling

    def __enter__(self) -> ArrowRouting:
        for module_name in self.experts:
            def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor, name: str = module_name) -> Tensor:
                return output + self.delta(name, args[0]).to(output.dtype)

            self._handles.append(self.model.get_submodule(module_name).register_forward_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def cma_search(objective: Callable[[np.ndarray], float], dim: int, *, budget: int, bound: float, sigma: float,
               seed: int) -> tuple[np.ndarray, float]:
    """Minimize ``objective`` over ``[-bound, bound]^dim`` from 0 by CMA-ES in about ``budget`` evaluations
    (whole generations); returns the best point evaluated and its value."""
    import cma

    opts = {"bounds": [-bound, bound], "maxfevals": budget, "seed": seed % (2**31 - 1) + 1, "verbose": -9,
            "verb_log": 0, "verb_disp": 0}
    es = cma.CMAEvolutionStrategy(np.zeros(dim), sigma, opts)
    while not es.stop():
        points = es.ask()
        es.tell(points, [objective(np.asarray(x)) for x in points])
    return np.asarray(es.result.xbest), float(es.result.fbest)


def support_seed(support: Batch) -> int:
    """A seed fixed by a support batch's tokens (the same episode draws the same candidates)."""
    return zlib.crc32(support["input_ids"].cpu().numpy().tobytes())


@register_algorithm("lora-library", LoRALibraryConfig)
class LoRALibrary(MetaLearner):
    """One LoRA per training task (``library/TASK/NAME``), composed for a new task (module doc).

    Raises:
        ConfigError: If the selection has shared weights (each task trains only its own LoRA).
    """

    @classmethod
    def needs_double_backward(cls, config: Any) -> bool:
        """Never: no gradient of a gradient (its inner config only serves evaluation or is first-order)."""
        return False

    row = "library"
    row_names_algorithm = False
    lends_inner = False
    amortized = True

    def export(self, out: Path, base_ref: str) -> list[str]:
        """Each task's LoRA as a PEFT adapter in ``out/library/TASK`` and ``out/library/manifest.json``
        (task -> folder); the model's own LoRA tensors are restored afterwards."""
        fast = self.selection.fast_params(self.model)
        saved = {n: p.detach().clone() for n, p in fast.items()}
        manifest = {}
        try:
            for task, lora in sorted(self.library.items()):
                with torch.no_grad():
                    for n, p in fast.items():
                        p.copy_(lora[n])
                save_peft(self.model, out / "library" / task, base_ref)
                manifest[task] = task
        finally:
            with torch.no_grad():
                for n, p in fast.items():
                    p.copy_(saved[n])
        (out / "library").mkdir(parents=True, exist_ok=True)
        (out / "library" / "manifest.json").write_text(json.dumps({"tasks": manifest, "outer_steps": self.outer_steps},
                                                                  indent=1), encoding="utf-8")
        return ["library"]

    def __init__(self, model: nn.Module, selection: ParameterSelection, config: LoRALibraryConfig) -> None:
        if selection.shared:
            raise ConfigError("meta.shared", "lora-library trains one adapter per task and no shared weights; "
                                             "set it to none")
        super().__init__(model, selection, config)
        self.library: dict[str, dict[str, nn.Parameter]] = {}

    def bind_tasks(self, tasks: Sequence[Any]) -> None:
        """A LoRA per training task, each starting at the adapter's standard initialization."""
        fast = self.selection.fast_params(self.model)
        for task in tasks:
            self.library[task.name] = {n: nn.Parameter(p.detach().clone()) for n, p in fast.items()}

    def meta_parameters(self) -> dict[str, Tensor]:
        out = super().meta_parameters()  # the standard initialization: kept, never trained
        out.update({f"{PREFIX}{t}/{n}": p for t, lora in self.library.items() for n, p in lora.items()})
        return out

    @classmethod
    def evaluation(cls, config: LoRALibraryConfig) -> dict[str, Any]:
        """A composition is scored as it is (no inner loop)."""
        return {"adapt": False, "queries": "plain"}

    def generators(self, values: Mapping[str, Tensor]) -> dict[str, Callable[[Batch, Mapping[str, Tensor]],
                                                                             dict[str, Tensor]]]:
        """``-hub`` (LoraHub's search on the support loss) and ``-mean`` (the uniform mean)."""
        tasks, library = stacked(values, list(self.selection.fast))
        cfg = self.config

        def mean(support: Batch, frozen: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return compose(library, torch.full((len(tasks),), 1 / len(tasks)))

        def hub(support: Batch, frozen: Mapping[str, Tensor]) -> dict[str, Tensor]:
            seed = support_seed(support)
            n = len(tasks) if cfg.hub_candidates in (0, len(tasks)) else min(cfg.hub_candidates, len(tasks))
            picked = sorted(np.random.default_rng(seed).choice(len(tasks), n, replace=False).tolist())
            sub = {k: v[picked] for k, v in library.items()}
            batch = prepare_batch(support)

            def objective(w: np.ndarray) -> float:
                with torch.no_grad():
                    loss = lm_loss(self.model, {**frozen, **compose(sub, torch.from_numpy(w))}, batch)
                return float(loss) + cfg.hub_l1 * float(np.abs(w).mean())

            w, _ = cma_search(objective, n, budget=cfg.hub_budget, bound=cfg.hub_bound, sigma=cfg.hub_sigma,
                              seed=seed)
            return compose(sub, torch.from_numpy(w))

        return {"-hub": hub, "-mean": mean}

    def routers(self, values: Mapping[str, Tensor]) -> dict[str, Callable[[], ArrowRouting]]:
        """``-arrow``: Arrow's routing of the library of ``values`` (scored with the standard initialization's
        zero update)."""
        _, library = stacked(values, list(self.selection.fast))
        routing = ArrowRouting(self.model, library, self.config.arrow_top_k)
        return {"-arrow": lambda: routing}

    def meta_gradients(self, episodes: Sequence[Episode]) -> dict[str, float]:
        """Each episode's task LoRA on its support and query examples (the mean of the two losses)."""
        q_loss = q_acc = 0.0
        for ep in episodes:
            if ep.task not in self.library:
                raise ConfigError("algorithm", f"no LoRA for task {ep.task!r}: call bind_tasks() with every "
                                               "training task before building the optimizer")
            lora = self.library[ep.task]
            s, _ = lm_loss_and_accuracy(self.model, lora, ep.support)
            q, acc = lm_loss_and_accuracy(self.model, lora, ep.query)
            ((s + q) / 2 / len(episodes)).backward()
            q_loss, q_acc = q_loss + float(q.detach()) / len(episodes), q_acc + float(acc) / len(episodes)
        return {"query_loss": q_loss, "query_accuracy": q_acc}
