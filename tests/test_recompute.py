"""Second-order MAML with recomputed inner steps (inner.recompute) against the stored-graph path."""

import pytest
import torch

import metalm
from metalm import AdapterConfig, ConfigError, MetaConfig, build_algorithm, select_parameters
from metalm.recompute import recomputed

from .conftest import episodes, make_model


def meta_gradient(arch, name, recompute, *, meta="norms", layers="all", **config):
    adapter = AdapterConfig(rank=2, alpha=4.0, layers=layers)
    model = make_model(arch, adapter=adapter)  # float64
    sel = select_parameters(model, adapter, MetaConfig(shared=meta))
    inner = {"steps": 3, "lr": 0.3, "recompute": recompute, **config.pop("inner", {})}
    learner = build_algorithm(name, model, sel, {"inner": inner, **config})
    metrics = learner.meta_gradients(episodes(2))
    return metrics, {n: p.grad.clone() for n, p in learner.meta_parameters().items() if p.grad is not None}


@pytest.mark.parametrize("name, config, meta, layers", [
    ("maml", {}, "norms", "all"),                                              # shared weights too
    ("maml", {"inner": {"optimizer": "adam", "lr": 0.01, "clip_grad_norm": 1.0}}, "none", "all"),
    ("meta-sgd", {}, "top:1", "top:2"),                                        # learned rates, frozen prefix
    ("maml++", {"first_order_steps": 0, "msl_anneal_steps": 4}, "none", "all"),  # every step's weights scored
])
def test_recomputed_steps_give_the_stored_graphs_meta_gradient(arch, name, config, meta, layers):
    plain_metrics, plain = meta_gradient(arch, name, False, meta=meta, layers=layers, **dict(config))
    metrics, grads = meta_gradient(arch, name, True, meta=meta, layers=layers, **dict(config))
    assert metrics == pytest.approx(plain_metrics, abs=1e-12)
    assert grads.keys() == plain.keys() and len(grads) > 0
    for n, g in plain.items():
        assert g.abs().sum() > 0, n
        assert torch.allclose(grads[n], g, rtol=0, atol=1e-6), (n, float((grads[n] - g).abs().max()))


def test_recompute_runs_the_step_again_in_the_backward_only():
    calls = []
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)

    def fn(v, create_graph):
        calls.append(create_graph)
        with torch.enable_grad():
            (g,) = torch.autograd.grad((v ** 3).sum(), v, create_graph=create_graph)
        return [v - 0.1 * g]

    (y,) = recomputed(fn, [x])
    assert calls == [False] and y.grad_fn is not None
    y.sum().backward()
    assert calls == [False, True]
    # d/dx (x - 0.1 * 3x^2) = 1 - 0.6 x, by hand
    assert torch.allclose(x.grad, torch.tensor([1 - 0.6, 1 - 1.2], dtype=torch.float64), rtol=0, atol=1e-15)


def test_recompute_is_refused_with_vmap():
    with pytest.raises(ConfigError, match="inner.recompute"):
        metalm.InnerConfig(recompute=True, vmap=True)
