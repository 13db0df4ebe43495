"""The one place that decides which tensors are fast weights and which are meta-parameters.

* **Fast weights** are changed by the inner loop (:func:`metalm.adapt`); their values in the model
  are the meta-learned *initialization*, which the outer loop updates.
* **Shared weights** are base-model tensors that the outer loop also updates (``MetaConfig.shared``)
  but the inner loop leaves alone.
* Everything else is frozen.

Learned inner learning rates are meta-parameters too; the algorithm that learns them owns them.
Names are always those of ``model.named_parameters()`` (so PEFT names start with
``base_model.model.``).
"""

from __future__ import annotations

import dataclasses
import re

from torch import Tensor, nn

from .config import AdapterConfig, MetaConfig, layer_indices
from .errors import ConfigError
from .models import causal_lm, decoder_layers


@dataclasses.dataclass(frozen=True)
class ParameterSelection:
    """Names of the fast weights and of the shared (outer-loop-only) base weights.

    Attributes:
        fast: Names of the tensors the inner loop adapts (initialization learned by the outer loop).
        shared: Names of base-model tensors updated by the outer loop only.
        layer_of: Decoder-layer index of each named parameter in a layer (others are absent).
        n_layers: Number of decoder layers.
    """

    fast: tuple[str, ...]
    shared: tuple[str, ...]
    layer_of: dict[str, int]
    n_layers: int

    def fast_params(self, model: nn.Module) -> dict[str, Tensor]:
        """The model's own fast-weight tensors (the learned initialization), by name."""
        named = dict(model.named_parameters())
        return {n: named[n] for n in self.fast}

    def meta_params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Every model tensor the outer loop updates: fast-weight initialization plus shared weights."""
        named = dict(model.named_parameters())
        return {n: named[n] for n in (*self.fast, *self.shared)}

    def lowest_adapted_layer(self) -> int | None:
        """The lowest decoder layer holding a fast or shared weight (``None`` if a non-layer tensor below
        every layer, such as the input embedding, is adapted or shared). Layers below it are a frozen
        prefix whose hidden states can be cached."""
        names = (*self.fast, *self.shared)
        if any(n not in self.layer_of and not _is_above_layers(n) for n in names):
            return None
        idx = [self.layer_of[n] for n in names if n in self.layer_of]
        return min(idx) if idx else self.n_layers

    def apply(self, model: nn.Module) -> None:
        """Set ``requires_grad`` so that exactly the fast and shared weights receive gradients."""
        keep = set(self.fast) | set(self.shared)
        for name, p in model.named_parameters():
            p.requires_grad_(name in keep)


def _is_above_layers(name: str) -> bool:
    # Final norm and output head sit above every decoder layer; embeddings sit below.
    return not any(k in name for k in ("embed", "wte", "wpe", "embed_positions"))


def _norm_param_names(model: nn.Module) -> set[str]:
    out = set()
    for mname, module in model.named_modules():
        if "norm" in type(module).__name__.lower():
            out.update(f"{mname}.{p}" if mname else p for p, _ in module.named_parameters(recurse=False))
    return out


def select_parameters(model: nn.Module, adapter: AdapterConfig, meta: MetaConfig | None = None) -> ParameterSelection:
    """Decide the fast and shared weights of ``model`` (already wrapped by :func:`~metalm.models.apply_adapter`).

    Args:
        model: The (PEFT-wrapped) causal LM.
        adapter: Which tensors the inner loop adapts.
        meta: Which base weights the outer loop also updates; default ``shared: none``.

    Raises:
        ConfigError: If the selection is empty or the adapter does not match the model.
    """
    meta = meta or MetaConfig()
    prefix, n_layers = decoder_layers(model)
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    names = [n for n, _ in model.named_parameters()]
    layer_of = {n: int(m.group(1)) for n in names if (m := pattern.match(n))}
    norms = _norm_param_names(model)
    in_range = set(range(n_layers)) if adapter.layers in (None, "all") else set(
        layer_indices(adapter.layers, n_layers, "adapter.layers"))
    reaches_top = n_layers - 1 in in_range
    head_weight = causal_lm(model).get_output_embeddings().weight
    head_names = {n for n, p in model.named_parameters() if p is head_weight}
    final_norm = {n for n in norms if n not in layer_of}

    def layer_ok(n: str) -> bool:
        return layer_of[n] in in_range if n in layer_of else reaches_top and n in final_norm

    if adapter.kind == "lora":
        fast = [n for n in names if "lora_" in n]
        if not fast:
            raise ConfigError("adapter.kind", "lora selected but the model has no LoRA weights; "
                                              "call apply_adapter first")
    elif adapter.kind == "head":
        fast = [n for n in names if n in head_names or n in final_norm]
    elif adapter.kind == "bitfit":
        fast = [n for n in names if (n.endswith(".bias") or n in norms) and layer_ok(n)]
    else:  # full
        fast = [n for n in names if layer_ok(n) or adapter.layers in (None, "all")]
    if not fast:
        raise ConfigError("adapter.kind", f"{adapter.kind!r} selects no tensors of {type(model).__name__}")

    fast_set = set(fast)
    if meta.shared == "none":
        shared: list[str] = []
    elif meta.shared == "norms":
        shared = [n for n in names if n in norms]
    elif meta.shared == "all":
        shared = [n for n in names if "lora_" not in n]
    else:
        top = set(layer_indices(meta.shared, n_layers, "meta.shared"))
        shared = [n for n in names if (layer_of.get(n) in top) or n in final_norm]
    shared = [n for n in shared if n not in fast_set and "lora_" not in n]
    return ParameterSelection(tuple(fast), tuple(shared), layer_of, n_layers)
