"""Frozen-prefix cache: exactly the same losses and (second-order) gradients as the full forward."""

import pytest
import torch

import metalm
from metalm import AdapterConfig, MetaConfig
from metalm.losses import cache_prefix, lm_loss

from .conftest import ARCHS, episodes, make_model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("first_order", [False, True])
def test_cached_prefix_gives_the_same_meta_gradient(arch, first_order):
    adapter = AdapterConfig(rank=2, layers="top:1")
    model = make_model(arch, adapter=adapter)  # 4 layers
    sel = metalm.select_parameters(model, adapter, MetaConfig(shared="top:1"))
    sel.apply(model)
    layer = sel.lowest_adapted_layer()
    assert layer == 3
    ep = episodes(1)[0]
    grads = []
    for cached in (False, True):
        support = cache_prefix(model, ep.support, layer) if cached else ep.support
        query = cache_prefix(model, ep.query, layer) if cached else ep.query
        assert ("prefix_cache" in support) == cached
        fast = sel.fast_params(model)
        adapted = metalm.adapt(model, fast, support, steps=2, lr=0.5, first_order=first_order)
        loss = lm_loss(model, adapted, query)
        meta = sel.meta_params(model)
        grads.append((loss.detach(), torch.autograd.grad(loss, list(meta.values()))))
    (loss_a, ga), (loss_b, gb) = grads
    assert torch.allclose(loss_a, loss_b, rtol=0, atol=1e-12)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(ga, gb, strict=True))
    assert any(g.abs().sum() > 0 for g in ga)


def test_no_cache_below_the_first_layer_or_for_embeddings():
    adapter = AdapterConfig(kind="full", layers="all")
    model = make_model("llama", adapter=adapter)
    sel = metalm.select_parameters(model, adapter, MetaConfig(shared="all"))
    assert sel.lowest_adapted_layer() is None
    assert "prefix_cache" not in cache_prefix(model, episodes(1)[0].support, sel.lowest_adapted_layer())
