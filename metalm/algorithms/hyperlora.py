"""HyperLoRA: amortized adaptation, a hypernetwork that writes the adapter's weights from a support set.

The amortized family of HyperTuning (Phang et al., ICML 2023, arXiv:2211.12485: a hypernetwork maps
few-shot examples to adapter parameters) and Text-to-LoRA (Charakorn et al., ICML 2025,
arXiv:2506.06105). A new task is adapted in one forward pass of the frozen base over its support
set, with no inner loop and no long context::

    h_i   = mean_t  base(x_i ; y_i)[t]                      pooled final hidden states  [H]
    z     = 1/K Σ_i GELU(W_in LayerNorm(h_i) + b_in)        a DeepSets pooling          [D]
    c     = W_out z + b_out                                 coefficients                [R]
    φ     = θ_0 + Σ_r c_r V_r                               the generated fast weights

``θ_0`` (the adapter's initialization), the basis ``V`` ``[R, *shape]`` of every fast weight and
the hypernetwork are meta-trained end-to-end through the query loss of ``φ`` (optionally after
``inner.steps`` gradient steps from ``φ`` on the support set: amortized initialization plus
gradient refinement). The support examples are encoded with the fast weights at their standard
initialization (for LoRA, ``B = 0``: the frozen base itself), so the encoder never moves.

Why coefficients over a learned basis rather than the weights directly: a linear head from the
hypernetwork's ``D`` features to every fast weight costs ``D x P`` parameters (``P`` = adapter size:
128 x 460,800 = 59M for SmolLM2-135M's rank-8 q/v LoRA, 0.44x the model), the basis ``R x P``
(16 x 460,800 = 7.4M) and is that head factored at rank ``R``. The generated update lies in an
``R``-dimensional subspace the outer loop learns, which keeps the hypernetwork trainable from a few
hundred tasks; ``refine`` lets gradient steps leave the subspace. ``W_out`` starts at zero, so an
untrained HyperLoRA generates exactly ``θ_0``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from ..config import InnerConfig
from ..data.episode import Episode
from ..errors import ConfigError
from ..inner import UpdateRule, adapt_trajectory
from ..losses import Batch, lm_loss_and_accuracy, prepare_batch, target_hidden
from ..models import causal_lm
from ..params import ParameterSelection
from .base import MetaLearner, register_algorithm

PREFIX = "hyper/"


@dataclasses.dataclass
class HyperLoRAConfig:
    """HyperLoRA's hypernetwork and training.

    Attributes:
        inner: The inner loop of ``refine`` (and the default budget of evaluation's ``hyper@ft`` row).
        basis: ``R``, the number of basis tensors per fast weight (the rank of the generated update).
        hidden: ``D``, the hypernetwork's width.
        refine: Adapt the generated weights with ``inner`` on the support set before the query loss
            (in training and in the ``hyper`` row); ``False``: the generated weights are used as they are.
        basis_std: Standard deviation of the basis's random initialization.
    """

    inner: InnerConfig = dataclasses.field(default_factory=lambda: InnerConfig(first_order=True))
    basis: int = 16
    hidden: int = 128
    refine: bool = False
    basis_std: float = 0.01

    def __post_init__(self) -> None:
        for key in ("basis", "hidden"):
            if not 1 <= getattr(self, key) <= 4096:
                raise ConfigError(f"algorithm.{key}", f"must be in 1..4096, got {getattr(self, key)}")
        if not (self.basis_std > 0 and math.isfinite(self.basis_std)):
            raise ConfigError("algorithm.basis_std", f"must be finite and > 0, got {self.basis_std}")


def support_features(model: nn.Module, params: Mapping[str, Tensor], support: Batch) -> Tensor:
    """Each support row's final hidden states mean-pooled over its tokens (answer included), ``[K, H]``,
    with ``params`` swapped in; no gradient. ``support`` may carry a frozen-prefix cache, or parts
    (:func:`metalm.losses.split_by_length`: the rows then come in the parts' order)."""
    if "parts" in support:
        return torch.cat([support_features(model, params, part) for part in support["parts"]])
    batch = prepare_batch(support)
    ids = batch["input_ids"]
    positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    with torch.no_grad():
        hidden = target_hidden(model, params, {**batch, "target_positions": positions})  # [K, T, H]
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def coefficients(values: Mapping[str, Tensor], features: Tensor) -> Tensor:
    """The hypernetwork: support features ``[K, H]`` -> basis coefficients ``[R]`` (module doc)."""
    x = F.layer_norm(features, features.shape[-1:], values[f"{PREFIX}norm.weight"], values[f"{PREFIX}norm.bias"])
    z = F.gelu(F.linear(x, values[f"{PREFIX}in.weight"], values[f"{PREFIX}in.bias"])).mean(0)
    return F.linear(z, values[f"{PREFIX}out.weight"], values[f"{PREFIX}out.bias"])


def generated(values: Mapping[str, Tensor], init: Mapping[str, Tensor], coeffs: Tensor) -> dict[str, Tensor]:
    """``θ_0 + Σ_r c_r V_r`` for every fast weight of ``init``."""
    return {n: v + torch.tensordot(coeffs.to(v.dtype), values[f"{PREFIX}basis/{n}"], dims=1) for n, v in init.items()}


@register_algorithm("hyperlora", HyperLoRAConfig)
class HyperLoRA(MetaLearner):
    """A hypernetwork from a support set to the fast weights, meta-trained end-to-end (module doc).

    Its meta-parameters are the fast weights' initialization ``θ_0``, any shared weights, and
    ``hyper/...``: the hypernetwork (``norm``, ``in``, ``out``) and one basis ``[R, *shape]`` per
    fast weight (``hyper/basis/NAME``). Evaluation's ``hyper`` row scores the generated weights
    (after ``refine``'s steps if set), ``hyper@ft`` adapts them with fine-tuning's chosen budget.
    """

    @classmethod
    def needs_double_backward(cls, config: HyperLoRAConfig) -> bool:
        """Only a second-order ``refine`` loop differentiates through gradients."""
        return config.refine and not config.inner.first_order

    row = "hyper"
    row_names_algorithm = False
    lends_inner = False
    amortized = True

    def export(self, out: Path, base_ref: str) -> list[str]:
        """``hypernetwork.safetensors``: the hypernetwork and bases (the exported adapter is their ``θ_0``)."""
        save_file({n: p.detach().contiguous() for n, p in self.hyper.items()}, str(out / "hypernetwork.safetensors"))
        return ["hypernetwork.safetensors"]

    def __init__(self, model: nn.Module, selection: ParameterSelection, config: HyperLoRAConfig) -> None:
        super().__init__(model, selection, config)
        fast = selection.fast_params(model)
        # The encoder: the fast weights at their standard initialization (LoRA: B = 0, the base itself).
        self.encoder = {n: p.detach().clone() for n, p in fast.items()}
        ref = next(iter(fast.values()))
        width = causal_lm(model).get_output_embeddings().weight.shape[1]
        kw = {"dtype": ref.dtype, "device": ref.device}
        r, d = config.basis, config.hidden
        bound = 1 / math.sqrt(width)
        self.hyper: dict[str, nn.Parameter] = {
            "norm.weight": nn.Parameter(torch.ones(width, **kw)),
            "norm.bias": nn.Parameter(torch.zeros(width, **kw)),
            "in.weight": nn.Parameter(torch.empty(d, width, **kw).uniform_(-bound, bound)),
            "in.bias": nn.Parameter(torch.zeros(d, **kw)),
            "out.weight": nn.Parameter(torch.zeros(r, d, **kw)),  # an untrained HyperLoRA generates θ_0
            "out.bias": nn.Parameter(torch.zeros(r, **kw)),
        }
        for n, p in fast.items():
            self.hyper[f"basis/{n}"] = nn.Parameter(torch.randn(r, *p.shape, **kw) * config.basis_std)

    def meta_parameters(self) -> dict[str, Tensor]:
        return {**super().meta_parameters(), **{PREFIX + k: v for k, v in self.hyper.items()}}

    @classmethod
    def evaluation(cls, config: HyperLoRAConfig) -> dict[str, Any]:
        """Generated weights, refined by the inner loop only when training refined them."""
        return {"adapt": config.refine, "queries": "plain"}

    def generators(self, values: Mapping[str, Tensor]) -> dict[str, Callable[[Batch, Mapping[str, Tensor]],
                                                                             dict[str, Tensor]]]:
        """The ``hyper`` row's ``generate(support, frozen) -> fast weights`` from meta-parameter values
        by name (no gradient); ``frozen``: the shared weights the support set is encoded with."""
        init = {n: values[n].detach() for n in self.selection.fast}
        hyper = {k: v.detach() for k, v in values.items() if k.startswith(PREFIX)}

        def generate(support: Batch, frozen: Mapping[str, Tensor]) -> dict[str, Tensor]:
            with torch.no_grad():
                feats = support_features(self.model, {**frozen, **self.encoder}, support)
                return generated(hyper, init, coefficients(hyper, feats))

        return {"": generate}

    def task_objective(self, episode: Episode) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One episode's query loss through the generated (and refined) weights, its accuracy, and the
        coefficients' norm."""
        values = self.meta_parameters()
        fast = self.selection.fast_params(self.model)
        coeffs = coefficients(values, support_features(self.model, self.encoder, episode.support))
        params = generated(values, fast, coeffs)
        if self.config.refine:
            first_order = self.inner.first_order
            traj = adapt_trajectory(self.model, params, self.prefixed(episode.support),
                                    UpdateRule.of(self.inner, first_order=first_order),
                                    loss_fn=self.inner_loss(first_order), recompute=self.inner.recompute)
            params = traj.params[-1]
        loss, acc = lm_loss_and_accuracy(self.model, params, episode.query)
        return loss, loss.detach(), acc.detach(), coeffs.detach().norm()

    def meta_gradients(self, episodes: Sequence[Episode]) -> dict[str, float]:
        totals = torch.zeros(3, dtype=torch.float64)
        for ep in episodes:
            objective, *metrics = self.task_objective(ep)
            (objective / len(episodes)).backward()
            totals += torch.tensor([float(m) for m in metrics], dtype=torch.float64)
        loss, acc, norm = (totals / len(episodes)).tolist()
        return {"query_loss": loss, "query_accuracy": acc, "coefficient_norm": norm}
