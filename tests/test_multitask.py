"""Multi-task learning: each weighting against a hand computation, torchjd aggregation, task heads."""

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import metalm
from metalm import AdapterConfig, ConfigError
from metalm.algorithms import MultitaskConfig, build_algorithm
from metalm.algorithms.weighting import (
    aggregators,
    build_aggregator,
    dwa_weights,
    gradnorm_update,
    uncertainty_objective,
    weighting_names,
)

from .conftest import episodes, grads_of, make_model, reference_loss, with_values


# ---------------------------------------------------------------- formulas by hand
def test_dwa_weights_by_hand():
    # Liu et al. 2019 eq. 2: w_i = T exp(r_i / temp) / sum_j exp(r_j / temp)
    w = dwa_weights(torch.tensor([1.0, 2.0, 0.5]), temperature=2.0)
    e = [math.exp(0.5), math.exp(1.0), math.exp(0.25)]
    assert torch.allclose(w, torch.tensor([3 * x / sum(e) for x in e]))
    assert torch.allclose(w.sum(), torch.tensor(3.0))


def test_uncertainty_objective_and_gradient_by_hand():
    losses = torch.tensor([2.0, 0.5])
    s = torch.tensor([0.0, math.log(4.0)], requires_grad=True)
    value = uncertainty_objective(losses, s)
    assert value.item() == pytest.approx(2.0 * 1 + 0.0 + 0.5 / 4 + 0.5 * math.log(4.0))
    value.backward()
    # d/ds (exp(-s) L + s/2) = -exp(-s) L + 1/2
    assert torch.allclose(s.grad, torch.tensor([-2.0 + 0.5, -0.5 / 4 + 0.5]))


def test_gradnorm_update_by_hand():
    # alpha = 0: every G_i is pulled toward mean(G) = 1.5; G = [2, 1] -> signs [+1, -1].
    new = gradnorm_update(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.5]),
                          alpha=0.0, lr=0.1)
    raw = torch.tensor([1 - 0.1 * 2, 1 + 0.1 * 1])
    assert torch.allclose(new, raw * 2 / raw.sum())
    # alpha = 1 with loss ratios [1, .5]: targets 1.5 * [4/3, 2/3] = [2, 1] = G, already balanced.
    same = gradnorm_update(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.5]),
                           alpha=1.0, lr=0.1)
    assert torch.allclose(same, torch.tensor([1.0, 1.0]))


def test_pcgrad_and_upgrad_through_torchjd_by_hand():
    jac = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # conflicting: g1 . g2 = -1
    # PCGrad (Yu et al. 2020): project each onto the other's normal plane, then sum.
    g1, g2 = jac
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    assert torch.allclose(build_aggregator("pcgrad", {}, 2)(jac), p1 + p2)
    # UPGrad's result never conflicts with any task's gradient.
    out = build_aggregator("upgrad", {}, 2)(jac)
    assert (jac @ out >= -1e-6).all()
    assert {"upgrad", "pcgrad", "cagrad", "mgda", "imtlg", "nashmtl", "alignedmtl", "gradvac"} <= set(aggregators())


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="unknown weighting 'pcgard'"):
        MultitaskConfig(weighting="pcgard")
    with pytest.raises(ConfigError, match=r"algorithm\.options\.temp.*temperature"):
        MultitaskConfig(weighting="dwa", options={"temp": 2})
    with pytest.raises(ConfigError, match=r"algorithm\.options\.alpha.*CAGrad"):
        MultitaskConfig(weighting="cagrad", options={"alpha": 1})
    with pytest.raises(ConfigError, match="algorithm.weights"):
        MultitaskConfig(weighting="equal", weights={"a": 2.0})
    assert "uncertainty" in weighting_names()


# ---------------------------------------------------------------- the outer step on a tiny model
def _setup(weighting="equal", heads="shared", **kw):
    model = make_model("gpt2", adapter=AdapterConfig(rank=2, layers="top:1"))
    sel = metalm.select_parameters(model, AdapterConfig(rank=2, layers="top:1"))
    algo = build_algorithm("multitask", model, sel, {"weighting": weighting, "heads": heads, **kw})
    eps = [dataclasses.replace(ep, task=name) for ep, name in zip(episodes(3, seed=3), "aba", strict=True)]
    return model, sel, algo, eps


def _task_losses_and_grads(model, sel, eps):
    """Per-task loss and gradient through the model's ordinary forward (an independent path)."""
    names = list(sel.fast)
    values = {n: p.detach() for n, p in sel.fast_params(model).items()}
    out = {}
    for task in dict.fromkeys(ep.task for ep in eps):
        mine = [ep for ep in eps if ep.task == task]

        def loss_fn(m, mine=mine):
            per = [(reference_loss(m, ep.support) + reference_loss(m, ep.query)) / 2 for ep in mine]
            return torch.stack(per).mean()

        clone = with_values(model, values)
        out[task] = (float(loss_fn(clone).detach()), grads_of(clone, names, loss_fn))
    return out


@pytest.mark.parametrize("weighting", ["equal", "fixed"])
def test_loss_weighting_gradient_equals_weighted_mean_of_task_gradients(weighting):
    kw = {"weights": {"a": 3.0}} if weighting == "fixed" else {}
    model, sel, algo, eps = _setup(weighting, **kw)
    ref = _task_losses_and_grads(model, sel, eps)
    algo.meta_gradients(eps)
    w = {"a": 3.0 if weighting == "fixed" else 1.0, "b": 1.0}
    for n, p in sel.fast_params(model).items():
        expected = sum(w[t] * ref[t][1][n] for t in ref) / len(ref)
        assert torch.allclose(p.grad, expected, atol=1e-10), n


def test_uncertainty_weighting_gradients_by_hand():
    model, sel, algo, eps = _setup("uncertainty")
    algo.bind_tasks([SimpleNamespace(name=t, spec=SimpleNamespace(type="classification")) for t in "ab"])
    with torch.no_grad():
        algo.task_params["log_var/a"].fill_(math.log(2.0))
    ref = _task_losses_and_grads(model, sel, eps)
    algo.meta_gradients(eps)
    precision = {"a": 0.5, "b": 1.0}
    for t, (loss, _) in ref.items():
        assert algo.task_params[f"log_var/{t}"].grad.item() == pytest.approx((-precision[t] * loss + 0.5) / 2)
    for n, p in sel.fast_params(model).items():
        expected = sum(precision[t] * ref[t][1][n] for t in ref) / 2
        assert torch.allclose(p.grad, expected, atol=1e-10)
    assert set(algo.meta_parameters()) >= {"task/log_var/a", "task/log_var/b"}


def test_uncertainty_needs_bound_tasks():
    _, _, algo, eps = _setup("uncertainty")
    with pytest.raises(ConfigError, match="bind_tasks"):
        algo.meta_gradients(eps)


def test_dwa_uses_the_last_two_losses_of_each_task():
    model, sel, algo, eps = _setup("dwa", options={"temperature": 2.0})
    algo.history = {"a": [2.0, 1.0], "b": [1.0, 1.5]}
    metrics = algo.meta_gradients(eps)
    expected = dwa_weights(torch.tensor([0.5, 1.5]), 2.0)
    assert metrics["weight/a"] == pytest.approx(float(expected[0]))
    assert metrics["weight/b"] == pytest.approx(float(expected[1]))
    ref = _task_losses_and_grads(model, sel, eps)
    assert algo.history["a"] == pytest.approx([1.0, ref["a"][0]])
    algo2 = _setup("dwa")[2]
    algo.outer_steps = 3
    algo2.load_state_dict(json.loads(json.dumps(algo.state_dict())))  # as a checkpoint's state.json holds it
    assert algo2.history == algo.history and algo2.outer_steps == 3


def test_gradnorm_weights_move_with_top_layer_gradient_norms():
    model, sel, algo, eps = _setup("gradnorm", options={"alpha": 1.5, "lr": 0.5})
    ref = _task_losses_and_grads(model, sel, eps)
    algo.meta_gradients(eps)  # first step: weights 1, L(0) recorded
    top = max(sel.layer_of[n] for n in sel.fast)
    norms = torch.tensor([math.sqrt(sum(float((g ** 2).sum()) for n, g in ref[t][1].items()
                                        if sel.layer_of[n] == top)) for t in ("a", "b")])
    expected = gradnorm_update(torch.ones(2), norms, torch.ones(2), 1.5, 0.5)
    assert algo.gradnorm_weights["a"] == pytest.approx(float(expected[0]), rel=1e-6)
    assert algo.gradnorm_weights["b"] == pytest.approx(float(expected[1]), rel=1e-6)
    assert algo.history == {"a": [pytest.approx(ref["a"][0])], "b": [pytest.approx(ref["b"][0])]}


@pytest.mark.parametrize("name", ["pcgrad", "upgrad", "mgda"])
def test_aggregation_routes_through_torchjd(name):
    model, sel, algo, eps = _setup(name)
    ref = _task_losses_and_grads(model, sel, eps)
    algo.meta_gradients(eps)
    names = list(sel.fast)
    jac = torch.stack([torch.cat([ref[t][1][n].flatten() for n in names]) for t in ("a", "b")])
    expected = build_aggregator(name, {}, 2)(jac)
    got = torch.cat([sel.fast_params(model)[n].grad.flatten() for n in names])
    assert torch.allclose(got, expected, atol=1e-8)
    if name == "pcgrad" and float(jac[0] @ jac[1]) < 0:  # conflicting: the result is not the plain sum
        assert not torch.allclose(got, jac.sum(0))


def test_task_heads_train_a_linear_head_on_the_final_hidden_state(registry):
    from metalm.data import CollateConfig, EpisodeSampler, SamplerConfig, tensorize
    from metalm.models import train_tokenizer

    from .data.fixtures import corpus

    tok = train_tokenizer(corpus(), vocab_size=200)
    model = make_model("llama", adapter=AdapterConfig(rank=2, layers="top:1"), vocab_size=len(tok))
    sel = metalm.select_parameters(model, AdapterConfig(rank=2, layers="top:1"))
    algo = build_algorithm("multitask", model, sel, {"heads": "task"})
    task = registry["toy_cls"]
    algo.bind_tasks([task, registry["toy_mc"]])
    assert set(algo.head_labels) == {"toy_cls"}  # multiple choice keeps the LM head
    text = EpisodeSampler([task], SamplerConfig(ways=2, shots=2, queries=1), seed=0).sample()
    ep = tensorize(text, tok, CollateConfig(max_length=64))
    algo.meta_gradients([ep])
    # Independently: hidden state of the last prompt token from the model's own forward, then the head.
    w, b = algo.task_params["head/toy_cls/weight"], algo.task_params["head/toy_cls/bias"]
    labels = task.spec.labels

    def head_loss(batch, examples):
        hidden = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True
                       ).hidden_states[-1]
        last_prompt = (batch["labels"] != -100).int().argmax(1) - 1
        logits = F.linear(hidden[torch.arange(len(examples)), last_prompt], w, b)
        target = torch.tensor([labels.index(text.classes[ex.label]) for ex in examples])
        return F.cross_entropy(logits, target)

    loss = (head_loss(ep.support, text.support) + head_loss(ep.query, text.query)) / 2
    gw, gb = torch.autograd.grad(loss, [w, b])
    assert torch.allclose(w.grad, gw, atol=1e-10) and torch.allclose(b.grad, gb, atol=1e-10)


def test_an_accumulated_outer_step_reports_the_tasks_of_every_meta_batch():
    """Meta-batches with different tasks report different per-task weights: the step keeps them all
    (each averaged over the meta-batches, 0 where a task was not drawn)."""
    _, _, algo, eps = _setup()
    opt = torch.optim.SGD(algo.meta_parameters().values(), lr=0.1)
    first, second = [eps[0]], [eps[1]]  # tasks a and b
    expected = {k: v / 2 for k, v in algo.meta_gradients(first).items()}
    for k, v in algo.meta_gradients(second).items():
        expected[k] = expected.get(k, 0.0) + v / 2
    metrics = algo.step(iter([first, second]), opt)
    assert metrics.pop("skipped") == 0.0 and metrics.pop("zero_grad") == 0.0
    assert metrics.keys() == expected.keys() and {"weight/a", "weight/b"} <= metrics.keys()
    assert metrics == pytest.approx(expected, rel=1e-12)
