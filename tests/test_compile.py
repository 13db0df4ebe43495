"""inner.compile: the first-order inner loop's loss through torch.compile gives the eager meta-gradients."""

import pytest
import torch

import metalm
from metalm import AdapterConfig, InnerConfig, MetaConfig
from metalm.errors import ConfigError
from metalm.losses import lm_loss

from .conftest import episodes, make_model


def fomaml(compile: bool, algo: str = "fomaml"):
    adapter = AdapterConfig(kind="lora", rank=2)
    model = make_model("gpt2", adapter=adapter, dtype=torch.float32)
    sel = metalm.select_parameters(model, adapter, MetaConfig())
    config = {"inner": InnerConfig(steps=2, lr=0.3, first_order=algo != "maml", compile=compile)}
    return metalm.build_algorithm(algo, model, sel, config)


@pytest.mark.slow
def test_compiled_first_order_meta_gradient_equals_eager():
    eps = episodes(2)
    grads = []
    for compile in (False, True):
        learner = fomaml(compile)
        assert (learner.inner_loss(True) is lm_loss) != compile
        metrics = learner.meta_gradients(eps)
        grads.append((metrics, {n: p.grad.clone() for n, p in learner.meta_parameters().items()}))
    (m_eager, g_eager), (m_compiled, g_compiled) = grads
    assert m_compiled["query_loss"] == pytest.approx(m_eager["query_loss"], rel=1e-5)
    for n, g in g_eager.items():
        assert g.abs().sum() > 0
        assert torch.allclose(g_compiled[n], g, rtol=1e-4, atol=1e-6), n


def test_second_order_steps_stay_eager():
    assert fomaml(True, "maml").inner_loss(False) is lm_loss


def test_compile_and_vmap_are_exclusive():
    with pytest.raises(ConfigError, match="inner.vmap"):
        InnerConfig(compile=True, vmap=True)
