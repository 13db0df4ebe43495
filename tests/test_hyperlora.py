"""HyperLoRA (amortized adaptation): features by a second code path, the meta-gradient against finite
differences, an untrained hypernetwork is exactly the plain initialization, and a run trains, resumes
bit-identically and is evaluated as the ``hyper`` rows."""

import json

import pytest
import torch
from safetensors.torch import load_file

import metalm
from metalm import AdapterConfig, build_algorithm, select_parameters
from metalm.algorithms.hyperlora import coefficients, generated, support_features
from metalm.data import CollateConfig
from metalm.eval import EvalConfig, Harness, init_of
from metalm.eval.budgets import choose_finetune
from metalm.eval.inits import init_from_values
from metalm.models import save_tiny_model
from metalm.run import TrainConfig, build_model

from .conftest import directional_derivatives, episodes, make_model
from .data.fixtures import corpus, make_world
from .test_train import whole_and_resumed

INNER = {"steps": 2, "lr": 0.1}


def build(arch="gpt2", **config):
    adapter = AdapterConfig(rank=2, alpha=4.0, layers="top:2")
    model = make_model(arch, adapter=adapter)
    algo = build_algorithm("hyperlora", model, select_parameters(model, adapter),
                           {"inner": INNER, "basis": 3, "hidden": 5, **config})
    return model, algo


def pooled_by_forward(model, params, batch):
    """Support features through the model's ordinary forward (``output_hidden_states``): an independent path."""
    named = dict(model.named_parameters())
    with torch.no_grad():
        saved = {n: named[n].detach().clone() for n in params}
        for n, v in params.items():
            named[n].copy_(v)
        try:
            mask = batch["attention_mask"]
            hidden = model(input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True,
                           position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).hidden_states[-1]
        finally:
            for n, v in saved.items():
                named[n].copy_(v)
    mask = batch["attention_mask"].to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_support_features_are_the_masked_mean_of_the_final_hidden_states(arch):
    model, algo = build(arch)
    support = episodes(1)[0].support
    support = {**support, "attention_mask": support["attention_mask"].clone()}
    support["attention_mask"][0, :3] = 0  # a left-padded row
    ours = support_features(model, algo.encoder, support)
    theirs = pooled_by_forward(model, algo.encoder, support)
    assert ours.shape == (support["input_ids"].shape[0], model.config.hidden_size)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)


def test_support_features_of_a_batch_split_by_length_are_its_rows_features(monkeypatch):
    """A support batch split into length groups (metalm.losses.split_by_length, as evaluation splits it)
    gives each row's features, in the groups' order: the same set of rows as the whole batch's."""
    import metalm.losses

    from .test_losses import uneven_batch

    monkeypatch.setattr(metalm.losses, "PAD_SLACK", 0)
    model, algo = build("llama")
    batch = uneven_batch(model.config.vocab_size)
    split = metalm.losses.split_by_length(batch)
    assert len(split["parts"]) >= 2
    whole = support_features(model, algo.encoder, batch)
    parts = support_features(model, algo.encoder, split)
    order = [int(r) for p in split["parts"] for r in p["input_ids"][:, 0]]  # rows by their first token
    first = [int(r) for r in batch["input_ids"][:, 0]]
    assert sorted(order) == sorted(first) and len(set(first)) == len(first)
    torch.testing.assert_close(parts, whole[[first.index(t) for t in order]], rtol=1e-6, atol=1e-9)


def objective(algo, eps) -> float:
    """Mean query loss of the generated (and refined) weights, from the definitions, no autograd."""
    values = {k: v.detach() for k, v in algo.meta_parameters().items()}
    total = 0.0
    for ep in eps:
        feats = pooled_by_forward(algo.model, algo.encoder, ep.support)
        fast = generated(values, {n: values[n] for n in algo.selection.fast}, coefficients(values, feats))
        if algo.config.refine:
            with torch.enable_grad():
                fast = metalm.adapt(algo.model, fast, ep.support, lr=INNER["lr"], steps=INNER["steps"])
        total += float(metalm.lm_loss(algo.model, fast, ep.query).detach())
    return total / len(eps)


@pytest.mark.parametrize("refine", [False, True])
def test_meta_gradient_matches_central_finite_differences(refine):
    model, algo = build(refine=refine, inner={**INNER, "first_order": False})
    with torch.no_grad():  # off the zero start, so every hypernetwork tensor has a gradient
        algo.hyper["out.weight"].normal_(0, 0.5)
    eps = episodes(2)
    algo.meta_gradients(eps)
    params = algo.meta_parameters()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
    analytic, numeric = directional_derivatives(params, lambda: objective(algo, eps), h=1e-5)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "model", corpus(), "llama")


def test_an_untrained_hypernetwork_is_the_plain_initialization_row_for_row(tiny_path, registry):
    """``W_out = 0``: the generated weights are θ_0 bit for bit, so ``hyper`` equals ``zeroshot`` and
    ``hyper@ft`` equals ``finetune`` on every episode."""
    config = TrainConfig(model=str(tiny_path), dtype="float64", adapter=AdapterConfig(rank=2, layers="top:2"),
                         collate=CollateConfig(max_length=64),
                         algorithm={"name": "hyperlora", "inner": INNER, "basis": 3, "hidden": 5})
    tok, model, selection, algo = build_model(config, torch.device("cpu"))
    values = {k: v.detach().clone() for k, v in algo.meta_parameters().items()}
    support = episodes(1, vocab=model.config.vocab_size)[0].support
    gen = init_from_values(algo, values).start(support)
    assert all(torch.equal(gen[n], values[n]) for n in selection.fast)
    assert init_of(algo).generate is not None and init_of(algo, trained=False).generate is None

    eval_config = EvalConfig(shots=[2], episodes=3, ways=2, queries=2, methods=["zeroshot", "finetune", "hyper"],
                             finetune_lrs=[0.3], finetune_optimizers=["sgd"], finetune_steps=[2])
    harness = Harness.from_learner(algo, tok, values, values, eval_config, kind="hyper")
    choice = choose_finetune(harness, [registry["toy_cls"]])
    data = harness.measure([registry["toy_cls"], registry["toy_mc"]], finetune=choice)
    for task in ("toy_cls", "toy_mc"):
        assert data[("hyper", task, 2)] == data[("zeroshot", task, 2)]
        assert data[("hyper@ft", task, 2)] == data[("finetune", task, 2)]
    budgets = harness.summarize(data, [registry["toy_cls"], registry["toy_mc"]], choice)["budgets"]
    assert budgets["hyper"] == "generated from the support set"
    assert budgets["hyper@ft"] == "generated from the support set, then sgd lr 0.3, 2 steps"


@pytest.mark.slow
def test_a_hyperlora_run_trains_resumes_bit_identically_and_is_evaluated(tmp_path, monkeypatch, capsys):
    from metalm.cli import main

    world = make_world(tmp_path / "world", max_steps=4, val_every=2, val_episodes=1, checkpoint_every=2,
                       outer={"lr": 0.01, "meta_batch": 2},
                       algorithm={"name": "hyperlora", "inner": INNER, "basis": 4, "hidden": 8, "refine": True})
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    whole, a = whole_and_resumed(world, tmp_path)
    assert {"meta/hyper/out.weight", "meta/hyper/in.weight"} <= set(a)
    assert any(k.startswith("meta/hyper/basis/") for k in a)
    assert a["meta/hyper/out.weight"].abs().sum() > 0  # the hypernetwork trained
    logs = [json.loads(line) for line in (whole / "log.jsonl").read_text().splitlines()]
    assert "coefficient_norm" in logs[-1] and "val_query_loss" in logs[-1]

    assert main(["export", str(whole), str(tmp_path / "export")]) == 0
    hyper = load_file(str(tmp_path / "export" / "hypernetwork.safetensors"))
    assert torch.equal(hyper["out.weight"], a["meta/hyper/out.weight"])

    out = tmp_path / "eval.json"
    assert main(["eval", "--run-dir", str(whole), "--shots", "1", "--episodes", "2", "--ways", "2", "--queries", "1",
                 "--json", str(out), "--quiet", "finetune_lrs=[0.1]", "finetune_steps=[1]", "cost_episodes=1"]) == 0
    report = json.loads(out.read_text())
    cost = {row: c["1"]["forward_tokens"] for row, c in report["episode_cost"].items()}  # each row alone
    assert cost["hyper"] > cost["zeroshot"] and cost["hyper@ft"] > cost["zeroshot"]  # + the support set's features
    assert {r["method"] for r in report["macro"]} == {"zeroshot", "zeroshot-cal", "icl", "icl-cal", "finetune",
                                                      "hyper", "hyper@ft"}
    assert report["budgets"]["hyper"].startswith("generated from the support set, then sgd lr 0.1, 2 steps")
    assert "| hyper |" in capsys.readouterr().out
    assert main(["eval", "--run-dir", str(whole), "--methods", "zeroshot,meta", "--quiet"]) == 2
    assert "meta needs a run trained with one of the algorithms" in capsys.readouterr().err
