"""Task-parallel inner loops (inner.vmap): the same losses, metrics and meta-gradients as the loop."""

import pytest
import torch
import torch.nn.functional as F

import metalm
from metalm import AdapterConfig, InnerConfig, MetaConfig, SyntheticTasks, batching
from metalm.batching import stack_batches, vmap_tasks
from metalm.losses import lm_loss

from .conftest import ARCHS, make_model


def ragged_episodes(n: int = 3, shots: int = 2, queries: int = 2) -> list[metalm.Episode]:
    """Episodes of different widths (T = 8, 9, 10, ...) and target counts (1 or 2 per row)."""
    out = []
    for i in range(n):
        ep = SyntheticTasks(128, n_classes=3, seq_len=8 + i).episodes(1, shots, queries, torch.Generator().manual_seed(i))[0]
        if i % 2:
            for batch in (ep.support, ep.query):
                batch["labels"][:, -2:] = batch["input_ids"][:, -2:]
        out.append(ep)
    return out


@pytest.fixture
def vmap_calls(monkeypatch):
    """Counts the meta-batches that really ran under vmap (so a silent fallback fails the test)."""
    calls = []
    real = batching.vmap_tasks

    def counting(fn, *stacked):
        calls.append(stacked[0]["input_ids"].shape[0])
        return real(fn, *stacked)

    monkeypatch.setattr(batching, "vmap_tasks", counting)
    return calls


def meta_step(algo: str, arch: str, vmap: bool, *, shared: str, layers: str, attn: str = "sdpa", chunk: int = 0):
    adapter = AdapterConfig(kind="lora", rank=2, layers=layers)
    model = make_model(arch, adapter=adapter, attn=attn)
    sel = metalm.select_parameters(model, adapter, MetaConfig(shared=shared))
    config = {"inner": InnerConfig(steps=3, lr=0.3, vmap=vmap, vmap_chunk=chunk,
                                   first_order=algo in ("fomaml", "reptile"))}
    if algo == "maml++":
        config["first_order_steps"] = 0
    learner = metalm.build_algorithm(algo, model, sel, config)
    metrics = learner.meta_gradients(ragged_episodes())
    grads = {n: p.grad.clone() for n, p in learner.meta_parameters().items() if p.grad is not None}
    return learner, metrics, grads


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("algo,shared,layers", [
    ("maml", "norms", "all"),       # second order through shared weights
    ("maml", "none", "top:1"),      # second order with the frozen-prefix cache
    ("fomaml", "top:1", "top:2"),
    ("meta-sgd", "none", "all"),     # learned per-element rates
    ("maml++", "none", "top:2"),     # per-step rates and the multi-step loss
    ("reptile", "none", "top:1"),
])
def test_vmap_matches_the_loop(algo, shared, layers, arch, vmap_calls):
    _, loop_metrics, loop_grads = meta_step(algo, arch, False, shared=shared, layers=layers)
    assert vmap_calls == []
    learner, metrics, grads = meta_step(algo, arch, True, shared=shared, layers=layers)
    assert vmap_calls == [3] and learner.vmap_failure is None
    assert metrics.keys() == loop_metrics.keys()
    for k, v in loop_metrics.items():
        assert metrics[k] == pytest.approx(v, abs=1e-12), k
    assert grads.keys() == loop_grads.keys() and len(grads) > 0
    for n, g in loop_grads.items():
        assert g.abs().sum() > 0, n
        assert torch.allclose(grads[n], g, rtol=0, atol=1e-12), n


@pytest.mark.parametrize("algo", ["maml", "reptile"])
def test_vmap_in_chunks_matches_the_loop(algo, vmap_calls):
    """3 tasks in chunks of 2: one vmap call of 2 tasks, then the last task alone."""
    _, loop_metrics, loop_grads = meta_step(algo, "gpt2", False, shared="none", layers="all")
    _, metrics, grads = meta_step(algo, "gpt2", True, shared="none", layers="all", chunk=2)
    assert vmap_calls == [2]
    assert metrics == pytest.approx(loop_metrics, abs=1e-12)
    for n, g in loop_grads.items():
        assert torch.allclose(grads[n], g, rtol=0, atol=1e-12), n


def test_eager_attention_gets_an_additive_mask(vmap_calls):
    _, loop_metrics, loop_grads = meta_step("maml", "gpt2", False, shared="none", layers="all", attn="eager")
    _, metrics, grads = meta_step("maml", "gpt2", True, shared="none", layers="all", attn="eager")
    assert vmap_calls == [3]
    assert metrics["query_loss"] == pytest.approx(loop_metrics["query_loss"], abs=1e-12)
    for n, g in loop_grads.items():
        assert torch.allclose(grads[n], g, rtol=0, atol=1e-12), n


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_stacked_batches_give_each_tasks_own_loss(attn):
    """Right padding to a common width, the dense mask and a left-padded row change no loss."""
    model = make_model("llama", attn=attn)
    params = dict(model.named_parameters())
    eps = ragged_episodes(3)
    pads = {"input_ids": 0, "attention_mask": 0, "labels": -100}
    left = {k: F.pad(v, (1, 0), value=pads[k]) for k, v in eps[0].support.items()}
    batches = [left, eps[1].support, eps[2].query]
    unpadded = [eps[0].support, eps[1].support, eps[2].query]
    stacked = stack_batches(batches, model)
    assert stacked["input_ids"].shape == (3, 6, 10) and stacked["dense_mask"].shape == (3, 6, 1, 10, 10)
    assert stacked["dense_mask"].dtype == (torch.bool if attn == "sdpa" else torch.float64)
    for i, batch in enumerate(unpadded):
        one = {k: v[i] for k, v in stacked.items()}
        assert torch.allclose(lm_loss(model, params, one), lm_loss(model, params, batch), rtol=0, atol=1e-12)


def test_episodes_are_grouped_by_row_counts(vmap_calls):
    """Episodes of 2, 3 and 2 shots: the two 2-shot ones run together, the 3-shot one alone."""
    adapter = AdapterConfig(kind="lora", rank=2)
    eps = [ragged_episodes(1, shots=2)[0], ragged_episodes(2, shots=3)[1], ragged_episodes(3, shots=2)[2]]
    assert stack_batches([e.support for e in eps[:2]], make_model("gpt2")) is None
    results = []
    for vmap in (False, True):
        model = make_model("gpt2", adapter=adapter)
        sel = metalm.select_parameters(model, adapter, MetaConfig())
        learner = metalm.build_algorithm("fomaml", model, sel, {"inner": InnerConfig(steps=2, vmap=vmap,
                                                                                      first_order=True)})
        metrics = learner.meta_gradients(eps)
        results.append((metrics, {n: p.grad.clone() for n, p in learner.meta_parameters().items()}))
    assert vmap_calls == [2]
    (m_loop, g_loop), (m_vmap, g_vmap) = results
    assert m_vmap == pytest.approx(m_loop, abs=1e-12)
    for n, g in g_loop.items():
        assert torch.allclose(g_vmap[n], g, rtol=0, atol=1e-12), n


def test_a_model_that_cannot_run_under_vmap_falls_back_with_one_warning(vmap_calls):
    adapter = AdapterConfig(kind="lora", rank=2, dropout=0.5)
    model = make_model("gpt2", adapter=adapter)
    model.train()  # active dropout: random ops are refused under vmap (randomness="error")
    sel = metalm.select_parameters(model, adapter, MetaConfig())
    learner = metalm.build_algorithm("fomaml", model, sel, {"inner": InnerConfig(steps=1, vmap=True, first_order=True)})
    with pytest.warns(RuntimeWarning, match="does not run under torch.func.vmap"):
        learner.meta_gradients(ragged_episodes(2))
    assert learner.vmap_failure and vmap_calls == [2]
    learner.meta_gradients(ragged_episodes(2))  # no second attempt
    assert vmap_calls == [2]
    assert all(p.grad is not None for p in sel.fast_params(model).values())


@pytest.mark.parametrize("optimizer,clip", [("sgd", None), ("adam", 0.5)])
def test_inner_loop_under_vmap_equals_one_call_per_task(optimizer, clip):
    """metalm.adapt itself under vmap: torch.func.grad inside, torch.autograd.grad outside."""
    model = make_model("gpt2", adapter=AdapterConfig(kind="lora", rank=2))
    fast = {n: p for n, p in model.named_parameters() if p.requires_grad}
    eps = ragged_episodes(3)

    def run(support, query):
        adapted = metalm.adapt(model, fast, support, steps=2, lr=0.2, optimizer=optimizer, clip_grad_norm=clip)
        return lm_loss(model, adapted, query)

    stacked = [stack_batches([getattr(e, part) for e in eps], model) for part in ("support", "query")]
    together = vmap_tasks(run, *stacked)
    alone = torch.stack([run(e.support, e.query) for e in eps])
    assert torch.allclose(together, alone, rtol=0, atol=1e-12)
    g_together = torch.autograd.grad(together.sum(), list(fast.values()))
    g_alone = torch.autograd.grad(alone.sum(), list(fast.values()))
    # Adam's 1/sqrt(v) amplifies round-off in its derivative (about 1e-10 relative here).
    tol = 1e-12 if optimizer == "sgd" else 1e-8
    assert all(torch.allclose(a, b, rtol=0, atol=tol * b.abs().max()) for a, b in zip(g_together, g_alone, strict=True))
