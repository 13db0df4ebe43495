"""Meta-gradients against independent oracles: finite differences, `higher`, and plain backward."""

import copy
import json

import higher
import pytest
import torch

import metalm
from metalm import (
    AdapterConfig,
    ConfigError,
    MetaConfig,
    UpdateRule,
    adapt,
    adapt_trajectory,
    build_algorithm,
    select_parameters,
)
from metalm.algorithms import multi_step_loss_weights

from .conftest import directional_derivatives, episodes, grads_of, make_model, reference_loss, with_values

INNER = {"steps": 2, "lr": 0.3}


def build(arch, name, adapter=None, meta=None, config=None):
    adapter = adapter or AdapterConfig(rank=2, alpha=4.0, layers="top:2")
    model = make_model(arch, adapter=adapter)
    sel = select_parameters(model, adapter, meta)
    return model, build_algorithm(name, model, sel, config or {"inner": INNER})


def objective(algo, eps) -> float:
    """The outer objective evaluated from its definition: mean query loss after adaptation
    (MAML++: the multi-step weighted sum), with the current tensor values."""
    cfg = algo.config
    lr = algo.inner_lr()
    total = 0.0
    with torch.no_grad():
        for ep in eps:
            fast = {n: p.detach() for n, p in algo.selection.fast_params(algo.model).items()}
            traj = adapt_trajectory(algo.model, fast, ep.support, UpdateRule.of(algo.inner, lr=lr, first_order=True),
                                    recompute=algo.inner.recompute)
            if getattr(cfg, "multi_step_loss", False):
                w = multi_step_loss_weights(algo.inner.steps, algo.outer_steps, cfg.msl_anneal_steps)
                steps = zip(w, traj.params[1:], strict=True)
                total += sum(wt * metalm.lm_loss(algo.model, p, ep.query) for wt, p in steps)
            else:
                total += metalm.lm_loss(algo.model, traj.params[-1], ep.query)
    return float(total) / len(eps)


@pytest.mark.parametrize("name, config, meta", [
    ("maml", {"inner": INNER}, MetaConfig(shared="top:1")),
    ("meta-sgd", {"inner": INNER}, None),
    ("maml++", {"inner": INNER, "first_order_steps": 0, "msl_anneal_steps": 4}, MetaConfig(shared="norms")),
    # Adam's step g/(|g|+eps) is nearly a sign function when |g| << eps does not hold; a larger eps
    # keeps it smooth at the finite-difference scale.
    ("maml", {"inner": {**INNER, "optimizer": "adam", "lr": 0.01, "eps": 1e-2}}, None),
])
def test_meta_gradient_matches_central_finite_differences(arch, name, config, meta):
    model, algo = build(arch, name, meta=meta, config=config)
    if name == "maml++":
        algo.outer_steps = 1  # weights off the uniform start
    eps = episodes(2)
    algo.meta_gradients(eps)
    params = algo.meta_parameters()
    assert all(p.grad is not None for p in params.values())
    # Llama's RMSNorm computes in fp32 even in an fp64 model, so its differences are noisier.
    h, rel = (1e-5, 1e-6) if arch == "gpt2" else (1e-4, 2e-3)
    analytic, numeric = directional_derivatives(params, lambda: objective(algo, eps), h=h)
    assert analytic == pytest.approx(numeric, rel=rel, abs=1e-9)


def test_full_parameter_maml_matches_higher():
    # higher 0.2.1 cannot patch transformers' Llama (nor any PEFT model); GPT-2 is its supported case.
    model = make_model("gpt2", attn="eager")
    oracle = copy.deepcopy(model)
    ep = episodes(1)[0]
    sel = select_parameters(model, AdapterConfig(kind="full"))
    algo = build_algorithm("maml", model, sel, {"inner": {"steps": 3, "lr": 0.1}})
    algo.meta_gradients([ep])

    opt = torch.optim.SGD(oracle.parameters(), lr=0.1)
    with higher.innerloop_ctx(oracle, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(3):
            diffopt.step(reference_loss(fmodel, ep.support))
        reference_loss(fmodel, ep.query).backward()
    theirs = dict(oracle.named_parameters())
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, theirs[n].grad, rtol=1e-6, atol=1e-10), n


def test_fomaml_gradient_is_the_query_gradient_at_the_adapted_weights(arch):
    model, algo = build(arch, "fomaml")
    eps = episodes(2)
    algo.meta_gradients(eps)
    fast = algo.selection.fast_params(model)
    expected = {n: torch.zeros_like(p) for n, p in fast.items()}
    for ep in eps:
        values = {n: p.detach().clone() for n, p in fast.items()}
        for _ in range(INNER["steps"]):  # the textbook SGD loop on a copy
            g = grads_of(with_values(model, values), list(values), lambda m, ep=ep: reference_loss(m, ep.support))
            values = {n: values[n] - INNER["lr"] * g[n] for n in values}
        g = grads_of(with_values(model, values), list(values), lambda m, ep=ep: reference_loss(m, ep.query))
        for n in expected:
            expected[n] += g[n] / len(eps)
    for n, p in fast.items():
        assert torch.allclose(p.grad, expected[n], atol=1e-10), n


def test_reptile_one_step_is_the_scaled_support_gradient(arch):
    model, algo = build(arch, "reptile", config={"inner": {"steps": 1, "lr": 0.3}})
    eps = episodes(2)
    algo.meta_gradients(eps)
    fast = algo.selection.fast_params(model)
    for n, p in fast.items():
        copy = with_values(model, {n: p.detach()})
        expected = sum(0.3 * grads_of(copy, [n], lambda m, ep=ep: reference_loss(m, ep.support))[n]
                       for ep in eps) / len(eps)
        assert torch.allclose(p.grad, expected, atol=1e-10), n


def test_reptile_outer_sgd_moves_init_toward_adapted_weights():
    model, algo = build("gpt2", "reptile", config={"inner": {"steps": 3, "lr": 0.3}})
    ep = episodes(1)[0]
    fast = algo.selection.fast_params(model)
    start = {n: p.detach().clone() for n, p in fast.items()}
    target = adapt(model, start, ep.support, steps=3, lr=0.3, first_order=True)
    algo.step([ep], torch.optim.SGD(algo.meta_parameters().values(), lr=0.5))
    for n, p in fast.items():
        assert torch.allclose(p, start[n] + 0.5 * (target[n] - start[n]), atol=1e-12), n


def test_multi_step_loss_weights_by_hand():
    assert multi_step_loss_weights(1, 10, 5) == [1.0]
    assert multi_step_loss_weights(4, 0, 10) == pytest.approx([0.25] * 4)
    # decay = 1/4/10 = 0.025 per outer step: after 4 steps non-final 0.25 - 0.1 = 0.15, final 0.25 + 0.3 = 0.55.
    assert multi_step_loss_weights(4, 4, 10) == pytest.approx([0.15, 0.15, 0.15, 0.55])
    # Far past annealing: floor 0.03/4 = 0.0075, final capped at 1 - 3 * 0.0075.
    assert multi_step_loss_weights(4, 1000, 10) == pytest.approx([0.0075] * 3 + [0.9775])


def test_mamlpp_anneals_from_first_to_second_order():
    model, algo = build("gpt2", "maml++", config={"inner": INNER, "first_order_steps": 2})
    opt = torch.optim.SGD(algo.meta_parameters().values(), lr=0.01)
    orders = [algo.step(episodes(1, seed=i), opt)["first_order"] for i in range(3)]
    assert orders == [1.0, 1.0, 0.0]
    assert all(v.shape == (2, 1, 1) for v in algo.inner_lrs.values())


def test_lora_layer_range_leaves_other_layers_untouched(arch):
    adapter = AdapterConfig(rank=2, layers="top:2")
    model, algo = build(arch, "maml", adapter=adapter)
    layers = {algo.selection.layer_of[n] for n in algo.selection.fast}
    assert layers == {2, 3}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(algo.meta_parameters().values(), lr=0.1)
    for i in range(2):
        algo.step(episodes(2, seed=i), opt)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == ("lora_" not in n), n


def test_full_layer_range_and_shared_top_layer_update_only_their_tensors(arch):
    adapter = AdapterConfig(kind="full", layers="1-2")
    model, algo = build(arch, "maml", adapter=adapter, meta=MetaConfig(shared="top:1"))
    sel = algo.selection
    assert {sel.layer_of.get(n) for n in sel.fast} == {1, 2}
    assert {sel.layer_of.get(n) for n in sel.shared} <= {3, None}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    algo.step(episodes(1), torch.optim.SGD(algo.meta_parameters().values(), lr=0.1))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= set(sel.fast) | set(sel.shared)
    assert not any(sel.layer_of.get(n) == 0 for n in moved)


def test_meta_gradients_accumulate_and_state_round_trips():
    model, algo = build("gpt2", "meta-sgd")
    eps = episodes(1)
    algo.meta_gradients(eps)
    first = {n: p.grad.clone() for n, p in algo.meta_parameters().items()}
    algo.meta_gradients(eps)
    assert all(torch.allclose(p.grad, 2 * first[n]) for n, p in algo.meta_parameters().items())
    algo.outer_steps = 5
    state = algo.state_dict()  # JSON (state.json); the learned rates are meta-parameters (tensors)
    assert json.loads(json.dumps(state)) == state == {"outer_steps": 5}
    assert set(algo.inner_lrs) and all(f"inner_lr/{n}" in algo.meta_parameters() for n in algo.inner_lrs)
    _, other = build("gpt2", "meta-sgd")
    other.load_state_dict(state)
    assert other.outer_steps == 5


def test_evaluation_adapts_with_learned_rates_and_keeps_the_model():
    from metalm.eval import adapted_params, init_of, query_metrics

    model, algo = build("gpt2", "meta-sgd")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ep = episodes(1)[0]
    init = init_of(algo)
    with torch.no_grad():  # learned rates of 0 and 2x the configured one, element by element
        rates = {n: torch.where(torch.rand_like(v) < 0.5, 0.0, 2 * INNER["lr"]) for n, v in algo.inner_lrs.items()}
    init.lr = rates
    adapted = adapted_params(model, init, ep.support)
    fast = {n: p.detach() for n, p in algo.selection.fast_params(model).items()}
    expected = adapt(model, fast, ep.support, steps=INNER["steps"], lr=rates, first_order=True)  # a second path
    assert adapted.keys() == expected.keys() and not any(v.requires_grad for v in adapted.values())
    assert all(torch.equal(adapted[n], expected[n]) for n in expected)
    assert any(not torch.equal(adapted[n], fast[n]) for n in fast)
    metrics = query_metrics(model, init, ep)
    with torch.no_grad():
        loss, acc = metalm.lm_loss_and_accuracy(model, expected, ep.query)
    assert metrics == {"query_loss": float(loss), "query_accuracy": float(acc)}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_variants_are_registrations_of_one_class():
    for name in ("maml", "fomaml", "anil", "meta-sgd", "maml++"):
        assert metalm.algorithms.algorithm_class(name) is metalm.algorithms.MAML
    _, algo = build("gpt2", "fomaml", config={"inner": {**INNER, "first_order": True}})
    assert algo.name == "fomaml" and type(algo) is metalm.algorithms.MAML and "fomaml" in repr(algo)
    with pytest.raises(TypeError, match="not a MetaLearner"):
        metalm.register_algorithm("not-a-learner", metalm.algorithms.MAMLConfig)(object)


@pytest.mark.parametrize("name", ["fomaml", "reptile"])
def test_an_outer_step_over_micro_batches_equals_one_meta_batch(name):
    """Two meta-batches of 2 episodes accumulated (drawn lazily) give the update of one of 4."""
    eps = episodes(4)
    config = {"inner": {**INNER, "first_order": True}}
    results = []
    for batches in (eps, (b for b in (eps[:2], eps[2:]))):
        model, algo = build("gpt2", name, config=config)
        opt = torch.optim.SGD(algo.meta_parameters().values(), lr=0.5)
        metrics = algo.step(batches, opt)
        results.append((metrics, {n: p.detach().clone() for n, p in algo.meta_parameters().items()}))
        assert algo.outer_steps == 1 and metrics["skipped"] == 0.0
    (m_one, w_one), (m_acc, w_acc) = results
    assert m_acc == pytest.approx(m_one, rel=1e-12)
    for n, w in w_one.items():
        assert torch.allclose(w_acc[n], w, rtol=0, atol=1e-12), n


def test_a_non_finite_outer_step_is_skipped_and_counted():
    model, algo = build("gpt2", "fomaml", config={"inner": {**INNER, "first_order": True}})
    fast = algo.selection.fast_params(model)
    with torch.no_grad():
        next(iter(fast.values()))[0, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in algo.meta_parameters().items()}
    opt = torch.optim.SGD(algo.meta_parameters().values(), lr=0.5)
    metrics = algo.step(episodes(2), opt, clip_grad_norm=1.0)
    assert metrics["skipped"] == 1.0 and "grad_norm" not in metrics and algo.outer_steps == 1
    after = algo.meta_parameters()
    assert all(torch.equal(after[n], v) or torch.isnan(v).any() for n, v in before.items())
    assert all(torch.equal(after[n].nan_to_num(0.0), v.nan_to_num(0.0)) for n, v in before.items())
    with pytest.raises(ConfigError, match="at least one"):
        algo.step([], opt)
    with pytest.raises(ConfigError, match="iterable of lists"):
        algo.step(iter(episodes(2)), opt)  # episodes where meta-batches are expected


def test_registry_and_config_errors():
    assert {"maml", "fomaml", "reptile", "anil", "meta-sgd", "maml++"} <= set(metalm.algorithm_names())
    model = make_model("gpt2", adapter=AdapterConfig(rank=2))
    sel = select_parameters(model, AdapterConfig(rank=2))
    with pytest.raises(ConfigError, match="unknown algorithm 'mamml'"):
        build_algorithm("mamml", model, sel)
    with pytest.raises(ConfigError) as err:
        build_algorithm("fomaml", model, sel, {"inner": {"first_order": False}})
    assert err.value.field == "algorithm.inner.first_order"
    with pytest.raises(ConfigError) as err:
        build_algorithm("maml", model, sel, {"inner": {"steps": 0}})
    assert err.value.field == "algorithm.inner.steps"
    with pytest.raises(ConfigError, match="anil adapts the head"):
        build_algorithm("anil", model, sel)  # LoRA on every layer, layer 0 included
    with pytest.raises(ConfigError, match="reptile moves only"):
        build_algorithm("reptile", model, select_parameters(model, AdapterConfig(rank=2), MetaConfig(shared="norms")))
    with pytest.raises(ValueError, match="already registered"):
        metalm.register_algorithm("maml", metalm.algorithms.MAMLConfig)(metalm.algorithms.MAML)
    # The FOMAML default survives a partial override of its inner section.
    assert metalm.algorithm_config("fomaml", {"inner": {"steps": 3}}).inner.first_order is True


def test_anil_trains_the_body_through_a_head_only_inner_loop():
    adapter = AdapterConfig(kind="head")
    model, algo = build("llama", "anil", adapter=adapter, meta=MetaConfig(shared="all"))
    assert all(n not in algo.selection.layer_of for n in algo.selection.fast)
    algo.meta_gradients(episodes(1))
    body = [p for n, p in model.named_parameters() if algo.selection.layer_of.get(n) == 0]
    assert body and all(p.grad is not None and p.grad.abs().sum() > 0 for p in body)


def test_second_order_terms_are_larger_than_the_finite_difference_tolerance(arch):
    # Guards the finite-difference test: a first-order gradient must not pass it by accident.
    directional = {}
    for name in ("maml", "fomaml"):
        model, algo = build(arch, name, config={"inner": {**INNER, "first_order": name == "fomaml"}})
        algo.meta_gradients(episodes(2))
        gen = torch.Generator().manual_seed(1)
        directional[name] = sum(float((p.grad * torch.randn(p.shape, generator=gen, dtype=p.dtype)).sum())
                                for p in algo.meta_parameters().values())
    assert abs(directional["maml"] - directional["fomaml"]) > 0.05 * abs(directional["maml"])
