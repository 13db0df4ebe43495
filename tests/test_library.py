"""The LoRA library (modular adaptation): LoraHub's search recovers known mixing weights, compositions
equal a hand computation, and a run trains, resumes bit-identically, exports a PEFT adapter per task and
is evaluated as the ``library-*`` rows."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.func import functional_call

from metalm import AdapterConfig, build_algorithm, select_parameters
from metalm.algorithms.library import cma_search, compose, stacked
from metalm.data import CollateConfig
from metalm.errors import ConfigError
from metalm.eval import EvalConfig, Harness, option_scores
from metalm.eval.inits import trained_rows
from metalm.models import save_tiny_model
from metalm.run import TrainConfig, build_model

from .conftest import episodes, make_model
from .data.fixtures import corpus, make_world
from .test_train import whole_and_resumed


def library_of(n_tasks=3, arch="gpt2", **config):
    adapter = AdapterConfig(rank=2, alpha=4.0, layers="top:2")
    model = make_model(arch, adapter=adapter)
    algo = build_algorithm("lora-library", model, select_parameters(model, adapter), config)
    algo.bind_tasks([SimpleNamespace(name=f"t{i}") for i in range(n_tasks)])
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # known, distinct LoRAs
        for lora in algo.library.values():
            for p in lora.values():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return model, algo


def test_cma_search_finds_a_known_minimum_within_the_bounds():
    target = np.array([0.7, -1.2, 0.1, 0.0])
    w, f = cma_search(lambda x: float(((x - target) ** 2).sum()), 4, budget=600, bound=1.5, sigma=0.5, seed=0)
    assert np.abs(w - target).max() < 1e-3 and f < 1e-6
    # A minimum outside the box: the search stops at the bound.
    w, _ = cma_search(lambda x: float(((x - 3.0) ** 2).sum()), 2, budget=300, bound=1.5, sigma=0.5, seed=0)
    assert np.all(w <= 1.5) and np.abs(w - 1.5).max() < 1e-2


def test_lorahub_composition_recovers_the_mixing_weights_of_a_mixture_task():
    """A task whose LoRA is ``A* = Σ w*_t A_t``, ``B* = Σ w*_t B_t``: searching ``w`` on the distance of the
    composed update ``B A`` to ``B* A*`` recovers ``w*`` (up to the sign LoraHub's composition cannot see:
    ``(-B)(-A) = BA``)."""
    _, algo = library_of(3)
    values = {k: v.detach() for k, v in algo.meta_parameters().items()}
    tasks, library = stacked(values, list(algo.selection.fast))
    assert tasks == ["t0", "t1", "t2"] and all(v.shape[0] == 3 for v in library.values())
    w_star = torch.tensor([0.8, -0.5, 0.3], dtype=torch.float64)

    def updates(lora):
        names = sorted(n for n in lora if "lora_A" in n)
        return [lora[n.replace("lora_A", "lora_B")] @ lora[n] for n in names]

    target = updates(compose(library, w_star))

    def distance(w):
        return float(sum(((u - t) ** 2).sum() for u, t in zip(updates(compose(library, torch.from_numpy(w))),
                                                              target, strict=True)))

    w, f = cma_search(distance, 3, budget=1500, bound=1.5, sigma=0.5, seed=1)
    assert f < 1e-8
    assert min(np.abs(w - w_star.numpy()).max(), np.abs(w + w_star.numpy()).max()) < 1e-3


def test_the_mean_composition_is_scored_as_the_hand_averaged_lora(tmp_path, registry):
    path = save_tiny_model(tmp_path / "model", corpus(), "llama")
    config = TrainConfig(model=str(path), dtype="float64", adapter=AdapterConfig(rank=2, layers="top:2"),
                         collate=CollateConfig(max_length=64), algorithm={"name": "lora-library", "hub_budget": 6})
    tok, model, selection, algo = build_model(config, torch.device("cpu"), [registry["toy_cls"], registry["toy_mc"]])
    gen = torch.Generator().manual_seed(0)
    values = {k: v.detach().clone() for k, v in algo.meta_parameters().items()}
    for k in values:
        if k.startswith("library/"):
            values[k] = torch.randn(values[k].shape, generator=gen, dtype=values[k].dtype) * 0.3
    rows = trained_rows(algo, values, "library")
    assert list(rows) == ["library-hub", "library-mean", "library-arrow"] and not any(r.adapt for r in rows.values())
    mean = {n: (values[f"library/toy_cls/{n}"] + values[f"library/toy_mc/{n}"]) / 2 for n in selection.fast}
    eval_config = EvalConfig(shots=[2], episodes=2, ways=2, queries=2, methods=["zeroshot", "library"])
    harness = Harness.from_learner(algo, tok, values, values, eval_config, kind="library")
    task = registry["toy_cls"]
    data = harness.measure([task])
    by_hand = []
    for ep in harness.episodes(task, 2):
        scores = option_scores(model, mean, ep.query, tok, CollateConfig(max_length=64))
        by_hand.append(sum(max(range(len(s)), key=s.__getitem__) == q.label
                           for s, q in zip(scores, ep.query, strict=True)) / len(ep.query))
    assert data[("library-mean", "toy_cls", 2)] == [by_hand]
    # The search's composition is a point of the box the library spans, drawn per episode deterministically.
    support = {k: v for k, v in episodes(1, vocab=model.config.vocab_size)[0].support.items()}
    a, b = rows["library-hub"].start(support), rows["library-hub"].start(support)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_arrow_routing_equals_a_hand_computation_token_by_token():
    """Every LoRA layer's output under the routing hooks minus its output without them equals, for each
    token: the top-k LoRAs by ``|<v_t, x>|`` (``v_t`` from a full SVD of ``B_t A_t``), softmax-weighted
    ``B_t A_t x`` times the scaling."""
    from metalm.algorithms.library import ArrowRouting

    model, algo = library_of(5, arch="llama", arrow_top_k=2)
    values = {k: v.detach() for k, v in algo.meta_parameters().items()}
    _, library = stacked(values, list(algo.selection.fast))
    routing = algo.routers(values)["-arrow"]()
    assert isinstance(routing, ArrowRouting) and len(routing.experts) == 4  # q and v of the top 2 layers
    zero = {n: torch.zeros_like(v) if "lora_B" in n else v for n, v in values.items() if n in algo.selection.fast}
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen.setdefault(name, []).append((args[0].detach(), output.detach()))
        return hook

    batch = episodes(1)[0].support

    def forward():  # records each routed layer's input and output (after the routing hook, if any)
        handles = [model.get_submodule(m).register_forward_hook(record(m)) for m in routing.experts]
        try:
            functional_call(model, zero, (batch["input_ids"],), strict=False)
        finally:
            for h in handles:
                h.remove()

    forward()  # without routing
    with routing:
        forward()
    assert not any(model.get_submodule(m)._forward_hooks for m in routing.experts)  # removed on exit
    for module_name, ((x0, y0), (x1, y1)) in seen.items():
        a = library[f"{module_name}.lora_A.default.weight"]
        b = library[f"{module_name}.lora_B.default.weight"]
        scaling = model.get_submodule(module_name).scaling["default"]
        updates = [b[t] @ a[t] for t in range(a.shape[0])]
        protos = [torch.linalg.svd(u)[2][0] for u in updates]
        expected = torch.zeros_like(y1)
        for i in range(x1.shape[0]):
            for j in range(x1.shape[1]):
                x = x1[i, j]
                logits = torch.stack([(v @ x).abs() for v in protos])
                top = sorted(range(len(protos)), key=lambda t: -float(logits[t]))[:2]
                weights = torch.softmax(logits[top], 0)
                expected[i, j] = sum(w * (updates[t] @ x) for w, t in zip(weights, top, strict=True)) * scaling
        if module_name == min(seen):  # the lowest routed layer sees the same input with and without routing
            torch.testing.assert_close(x1, x0)
        layer = model.get_submodule(module_name).base_layer
        torch.testing.assert_close(y0, layer(x0), rtol=0, atol=0)  # the adapter's own update is zero
        base = layer(x1)
        torch.testing.assert_close(y1 - base, expected, rtol=1e-9, atol=1e-12)


def test_config_errors_name_the_field():
    model = make_model("gpt2", adapter=AdapterConfig(rank=2))
    sel = select_parameters(model, AdapterConfig(rank=2))
    for bad, field in (({"hub_budget": 1}, "algorithm.hub_budget"), ({"hub_candidates": -1}, "algorithm.hub_candidates"),
                       ({"hub_bound": 0}, "algorithm.hub_bound")):
        with pytest.raises(ConfigError) as err:
            build_algorithm("lora-library", model, sel, bad)
        assert err.value.field == field
    # What runs on a sharded base is what each algorithm declares (no gradient of a gradient here).
    TrainConfig(model="m", algorithm={"name": "lora-library", "inner": {"first_order": False}}, distributed="fsdp")
    TrainConfig(model="m", algorithm={"name": "hyperlora", "inner": {"first_order": False}}, distributed="fsdp")
    with pytest.raises(ConfigError, match="double backward"):
        TrainConfig(model="m", algorithm={"name": "hyperlora", "refine": True, "inner": {"first_order": False}},
                    distributed="fsdp")
    algo = build_algorithm("lora-library", model, sel)
    with pytest.raises(ConfigError, match="no LoRA"):
        algo.generators({})
    with pytest.raises(ConfigError, match="no LoRA for task"):
        algo.meta_gradients(episodes(1))


@pytest.mark.slow
def test_a_library_run_trains_resumes_bit_identically_exports_and_is_evaluated(tmp_path, monkeypatch, capsys):
    from metalm.cli import main

    world = make_world(tmp_path / "world", max_steps=4, val_every=2, val_episodes=1, checkpoint_every=2,
                       outer={"lr": 0.01, "meta_batch": 2}, algorithm={"name": "lora-library", "hub_budget": 6})
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    whole, a = whole_and_resumed(world, tmp_path)
    trained = sorted({k.split("/")[2] for k in a if k.startswith("meta/library/")})
    assert trained == ["toy_cls", "toy_mc"]  # the split's training tasks, one LoRA each

    assert main(["export", str(whole), str(tmp_path / "export")]) == 0
    manifest = json.loads((tmp_path / "export" / "library" / "manifest.json").read_text())
    assert sorted(manifest["tasks"]) == trained
    peft = load_file(str(tmp_path / "export" / "library" / "toy_mc" / "adapter_model.safetensors"))
    ours = {k.split("meta/library/toy_mc/")[1]: v for k, v in a.items() if k.startswith("meta/library/toy_mc/")}
    assert len(peft) == len(ours) and all(any(torch.equal(v, w) for w in ours.values()) for v in peft.values())

    out = tmp_path / "eval.json"
    assert main(["eval", "--run-dir", str(whole), "--shots", "1", "--episodes", "2", "--ways", "2", "--queries", "1",
                 "--methods", "zeroshot,finetune,library", "--json", str(out), "--quiet", "finetune_lrs=[0.1]",
                 "finetune_steps=[1]", "finetune_optimizers=[sgd]", "cost_episodes=1"]) == 0
    report = json.loads(out.read_text())
    assert {r["method"] for r in report["macro"]} == {"zeroshot", "finetune", "library-hub", "library-mean",
                                                      "library-arrow", "library-hub@ft", "library-mean@ft"}
    cost = {row: c["1"]["forward_tokens"] for row, c in report["episode_cost"].items()}  # each row alone
    assert set(cost) == {r["method"] for r in report["macro"]}
    assert cost["library-hub"] > cost["zeroshot"]  # LoraHub's search reads the support set
    assert report["budgets"]["library-hub"] == "generated from the support set"
    assert "| library-hub |" in capsys.readouterr().out
