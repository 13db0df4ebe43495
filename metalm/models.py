"""Loading causal language models and attaching adapters.

Any ``transformers`` causal LM works: from a local folder (or a hub name where a hub is reachable)
or from a :class:`~transformers.PretrainedConfig` (tiny random models for tests and examples).
Models come back in eval mode: dropout stays off so that the inner loop is deterministic and can
later run under ``torch.func.vmap``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from .config import AdapterConfig, layer_indices
from .errors import ConfigError, MetalmError

#: Attention implementations whose graphs support double backward. ``sdpa`` qualifies because the
#: inner loop pins SDPA to its math kernel whenever it builds a second-order graph.
DOUBLE_BACKWARD_ATTENTION = ("eager", "sdpa")


def tiny_config(arch: Literal["gpt2", "llama"] = "gpt2", **overrides: Any) -> PretrainedConfig:
    """A small randomly initializable config of a real architecture, for tests and examples.

    Args:
        arch: ``gpt2`` (learned positions, LayerNorm, Conv1D, tied head) or ``llama`` (RoPE,
            RMSNorm, grouped-query attention, untied head).
        **overrides: Config fields to change (e.g. ``vocab_size=8192``).
    """
    if arch == "gpt2":
        fields: dict[str, Any] = dict(vocab_size=128, n_embd=32, n_layer=4, n_head=2, n_positions=64,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                      eos_token_id=0)
        fields.update(overrides)
        return GPT2Config(**fields)
    if arch == "llama":
        fields = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
        fields.update(overrides)
        return LlamaConfig(**fields)
    raise ConfigError("arch", f"{arch!r} is not one of gpt2, llama")


def load_model(
    source: str | os.PathLike[str] | PretrainedConfig,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    device: str | torch.device | None = None,
    seed: int | None = None,
) -> PreTrainedModel:
    """Load a causal LM in eval mode.

    Args:
        source: A local model folder, a hub name, or a config (randomly initialized weights).
        dtype: Parameter dtype (float64 is handy for gradient checks).
        attn_implementation: ``sdpa`` (default; pinned to the math kernel for second-order inner
            loops), ``eager``, or another transformers implementation for first-order use only.
        device: Where to put the model.
        seed: Seed for the random initialization when ``source`` is a config.

    Raises:
        MetalmError: If the folder or name cannot be loaded as a causal LM.
    """
    if isinstance(source, PretrainedConfig):
        if seed is not None:
            torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(source, attn_implementation=attn_implementation)
        model = model.to(dtype=dtype)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(os.fspath(source), dtype=dtype,
                                                         attn_implementation=attn_implementation)
        except (OSError, ValueError) as err:
            raise MetalmError(f"cannot load a causal LM from {os.fspath(source)!r}: {err}") from err
    if device is not None:
        model = model.to(device)
    model.eval()
    return model


def causal_lm(model: nn.Module) -> PreTrainedModel:
    """The transformers causal LM inside ``model`` (unwraps a PEFT model; no copy)."""
    get_base = getattr(model, "get_base_model", None)
    inner = get_base() if callable(get_base) else model
    if not isinstance(inner, PreTrainedModel) or inner.get_output_embeddings() is None:
        raise MetalmError(f"{type(model).__name__} is not a transformers causal LM (or a PEFT wrapper of one)")
    return inner


def attention_implementation(model: nn.Module) -> str:
    """The attention implementation the model runs with (``eager``, ``sdpa``, ...)."""
    return str(getattr(causal_lm(model).config, "_attn_implementation", "eager"))


def decoder_layers(model: nn.Module) -> tuple[str, int]:
    """Find the stack of decoder blocks: its dotted name in ``model`` and its length.

    Returns:
        ``(prefix, n_layers)``, e.g. ``("base_model.model.transformer.h", 12)``.
    """
    n = getattr(causal_lm(model).config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n is None or len(module) == n):
            return name, len(module)
    raise MetalmError(f"cannot find the decoder layers of {type(model).__name__}")


def apply_adapter(model: PreTrainedModel, adapter: AdapterConfig) -> nn.Module:
    """Attach the adapter the config asks for.

    ``lora`` wraps the model with PEFT (the model's modules gain LoRA layers, as PEFT does);
    ``head``, ``bitfit`` and ``full`` need no new modules and return ``model`` itself: which of its
    tensors are fast weights is decided by :func:`metalm.params.select_parameters`.
    """
    if adapter.kind != "lora":
        return model
    from peft import LoraConfig, get_peft_model


    _, n_layers = decoder_layers(model)
    layers = None if adapter.layers in (None, "all") else layer_indices(adapter.layers, n_layers, "adapter.layers")
    # GPT-2 style Conv1D stores weights transposed; tell PEFT up front instead of letting it warn.
    conv1d = any(type(m).__name__ == "Conv1D" for m in model.modules())
    try:
        lora = LoraConfig(r=adapter.rank, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
                          target_modules=adapter.target_modules, layers_to_transform=layers, bias="none",
                          fan_in_fan_out=conv1d)
        return get_peft_model(model, lora)
    except ValueError as err:
        raise ConfigError("adapter.target_modules", str(err)) from err


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer on ``texts`` (for tiny models in tests and examples).

    It has ``<pad>`` (id 0), ``<s>`` (BOS, id 1, prepended to every encoded text with special
    tokens), ``</s>`` (EOS, id 2) and ``<unk>`` (id 3), like the tokenizers of real causal LMs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers


    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<pad>", "<s>", "</s>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def save_tiny_model(path: str | os.PathLike[str], texts: list[str], arch: Literal["gpt2", "llama"] = "llama",
                    vocab_size: int = 512, seed: int = 0, **overrides: Any) -> str:
    """Write a tiny random causal LM with a BPE tokenizer trained on ``texts`` to a model folder.

    The folder loads like any pretrained model (``metalm train`` with ``model: PATH``); used for
    end-to-end tests and examples that must not download anything.
    """
    tokenizer = train_tokenizer(texts, vocab_size)
    model = load_model(tiny_config(arch, vocab_size=len(tokenizer), **overrides), seed=seed)
    model.save_pretrained(os.fspath(path))
    tokenizer.save_pretrained(os.fspath(path))
    return os.fspath(path)


def save_peft(model: nn.Module, out: os.PathLike | str, base_ref: str) -> None:
    """The model's LoRA in PEFT format in ``out``, its base named by ``base_ref`` (portable: not this
    machine's absolute folder)."""
    import json
    from pathlib import Path

    model.save_pretrained(os.fspath(out))
    path = Path(out) / "adapter_config.json"
    adapter_config = json.loads(path.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = base_ref
    path.write_text(json.dumps(adapter_config, indent=2), encoding="utf-8")
