"""Which tensors are fast weights and which are meta-parameters."""

import pytest
import torch

import metalm
from metalm import AdapterConfig, ConfigError, MetaConfig, select_parameters
from metalm.params import layer_indices

from .conftest import make_model


@pytest.mark.parametrize("spec, expected", [
    ("all", [0, 1, 2, 3]), ("top:1", [3]), ("top:4", [0, 1, 2, 3]), ("bottom:2", [0, 1]),
    ("1-2", [1, 2]), ("3,0", [0, 3]),
])
def test_layer_ranges(spec, expected):
    assert layer_indices(spec, 4) == expected


@pytest.mark.parametrize("spec", ["top:0", "top:5", "2-7", "9", "middle", "top:-1", ""])
def test_bad_layer_ranges_name_the_field(spec):
    with pytest.raises(ConfigError) as err:
        layer_indices(spec, 4, "adapter.layers")
    assert err.value.field == "adapter.layers"


def test_lora_fast_weights_are_the_lora_tensors_of_the_range(arch):
    adapter = AdapterConfig(rank=2, layers="1,3")
    model = make_model(arch, adapter=adapter)
    sel = select_parameters(model, adapter)
    assert sel.fast and all("lora_" in n for n in sel.fast)
    assert {sel.layer_of[n] for n in sel.fast} == {1, 3}
    assert sel.shared == ()
    assert sel.lowest_adapted_layer() == 1


def test_head_is_output_embedding_and_final_norm():
    gpt2 = make_model("gpt2")
    sel = select_parameters(gpt2, AdapterConfig(kind="head"))
    # GPT-2 ties its head to the input embedding: adapting the head adapts that shared tensor.
    assert set(sel.fast) == {"transformer.wte.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"}
    assert sel.lowest_adapted_layer() is None
    llama = make_model("llama")
    sel = select_parameters(llama, AdapterConfig(kind="head"))
    assert set(sel.fast) == {"lm_head.weight", "model.norm.weight"}
    assert sel.lowest_adapted_layer() == 4  # nothing in any layer: every layer is a frozen prefix


def test_bitfit_is_biases_and_norms():
    gpt2 = make_model("gpt2")
    sel = select_parameters(gpt2, AdapterConfig(kind="bitfit", layers="top:1"))
    assert all(n.endswith(".bias") or "ln_" in n for n in sel.fast)
    assert {sel.layer_of.get(n) for n in sel.fast} == {3, None}  # layer 3 and the final norm
    llama = make_model("llama")
    sel = select_parameters(llama, AdapterConfig(kind="bitfit"))
    assert set(sel.fast) == {n for n, _ in llama.named_parameters() if "norm" in n}  # Llama has no biases


def test_shared_modes(arch):
    adapter = AdapterConfig(rank=2, layers="top:1")
    model = make_model(arch, adapter=adapter)
    names = {n for n, _ in model.named_parameters()}
    assert select_parameters(model, adapter, MetaConfig("none")).shared == ()
    norms = select_parameters(model, adapter, MetaConfig("norms")).shared
    assert norms and all("norm" in n or "ln_" in n for n in norms)
    top = select_parameters(model, adapter, MetaConfig("top:2"))
    assert {top.layer_of.get(n) for n in top.shared} == {2, 3, None}
    everything = select_parameters(model, adapter, MetaConfig("all"))
    assert set(everything.shared) == {n for n in names if "lora_" not in n}
    assert everything.lowest_adapted_layer() is None  # embeddings are shared: nothing can be cached


def test_full_never_doubles_as_shared():
    model = make_model("gpt2")
    sel = select_parameters(model, AdapterConfig(kind="full", layers="top:2"), MetaConfig("all"))
    assert not set(sel.fast) & set(sel.shared)
    assert set(sel.fast) | set(sel.shared) == {n for n, _ in model.named_parameters()}


def test_apply_sets_requires_grad_exactly():
    adapter = AdapterConfig(rank=2)
    model = make_model("llama", adapter=adapter)
    sel = select_parameters(model, adapter, MetaConfig("norms"))
    sel.apply(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(sel.fast) | set(sel.shared)


def test_errors():
    plain = make_model("gpt2")
    with pytest.raises(ConfigError, match="no LoRA weights"):
        select_parameters(plain, AdapterConfig(kind="lora"))
    with pytest.raises(ConfigError, match="adapter.layers"):
        metalm.apply_adapter(plain, AdapterConfig(layers="top:9"))
    with pytest.raises(ConfigError, match="meta.shared"):
        MetaConfig("some")
    with pytest.raises(metalm.MetalmError, match="not a transformers causal LM"):
        select_parameters(torch.nn.Linear(2, 2), AdapterConfig(kind="head"))
