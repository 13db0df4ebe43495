"""The inner loop against independent computations: plain backward on a copy, torch.optim, torch's clipping."""

import subprocess
import sys

import pytest
import torch

import metalm
from metalm import AdapterConfig, ConfigError, adapt, adapt_trajectory, select_parameters

from .conftest import episodes, grads_of, make_model, reference_loss, with_values


def setup(arch, adapter=None):
    adapter = adapter or AdapterConfig(rank=2, alpha=4.0, layers="top:2")
    model = make_model(arch, adapter=adapter)
    sel = select_parameters(model, adapter)
    sel.apply(model)
    return model, sel, episodes(1)[0]


def test_model_is_bit_identical_after_adapt(arch):
    model, sel, ep = setup(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = sel.fast_params(model)
    adapted = adapt(model, fast, ep.support, steps=3, lr=0.5)
    metalm.lm_loss(model, adapted, ep.query).backward()  # second-order graph, then backward
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not torch.equal(adapted[n], fast[n]) for n in fast if "lora_B" in n)


def test_sgd_steps_match_plain_backward_on_a_copy(arch):
    model, sel, ep = setup(arch)
    fast = sel.fast_params(model)
    adapted = adapt(model, fast, ep.support, steps=3, lr=0.3, first_order=True)
    values = {n: p.detach().clone() for n, p in fast.items()}
    for _ in range(3):  # the textbook loop, on a copy, through the model's ordinary forward
        g = grads_of(with_values(model, values), list(values), lambda m: reference_loss(m, ep.support))
        values = {n: values[n] - 0.3 * g[n] for n in values}
    for n in values:
        assert torch.allclose(adapted[n], values[n], atol=1e-10), n


def test_adam_matches_torch_optim_adam():
    model, sel, ep = setup("llama")
    fast = sel.fast_params(model)
    adapted = adapt(model, fast, ep.support, steps=4, lr=0.01, optimizer="adam", betas=(0.8, 0.99), eps=1e-6)
    copy = with_values(model, {n: p.detach() for n, p in fast.items()})
    named = dict(copy.named_parameters())
    opt = torch.optim.Adam([named[n] for n in fast], lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    for _ in range(4):
        opt.zero_grad()
        reference_loss(copy, ep.support).backward()
        opt.step()
    for n in fast:
        assert torch.allclose(adapted[n], named[n], atol=1e-10), n


def test_adam_second_order_has_no_nan_with_zero_gradients():
    # LoRA's standard init (B = 0) makes A's gradient exactly zero: sqrt'(0) must not poison the graph.
    adapter = AdapterConfig(rank=2, layers="top:1")
    model = metalm.apply_adapter(metalm.load_model(metalm.tiny_config("gpt2"), dtype=torch.float64, seed=0), adapter)
    sel = select_parameters(model, adapter)
    sel.apply(model)
    ep = episodes(1)[0]
    fast = sel.fast_params(model)
    out = adapt(model, fast, ep.support, steps=2, lr=0.01, optimizer="adam")
    metalm.lm_loss(model, out, ep.query).backward()
    assert all(torch.isfinite(p.grad).all() for p in fast.values())


def test_clipping_matches_torch_clip_grad_norm():
    model, sel, ep = setup("gpt2")
    fast = sel.fast_params(model)
    adapted = adapt(model, fast, ep.support, steps=2, lr=0.5, clip_grad_norm=0.01, first_order=True)
    copy = with_values(model, {n: p.detach() for n, p in fast.items()})
    named = dict(copy.named_parameters())
    opt = torch.optim.SGD([named[n] for n in fast], lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        reference_loss(copy, ep.support).backward()
        torch.nn.utils.clip_grad_norm_([named[n] for n in fast], 0.01)
        opt.step()
    for n in fast:
        assert torch.allclose(adapted[n], named[n], atol=1e-8), n


def test_learned_rate_forms_agree_with_float_rates():
    model, sel, ep = setup("gpt2")
    fast = sel.fast_params(model)
    ref = adapt(model, fast, ep.support, steps=2, lr=0.2)
    per_elem = {n: torch.full_like(p, 0.2) for n, p in fast.items()}
    per_step = {n: torch.full((2,) + (1,) * p.dim(), 0.2, dtype=p.dtype) for n, p in fast.items()}
    for lr in (per_elem, per_step):
        out = adapt(model, fast, ep.support, steps=2, lr=lr)
        assert all(torch.allclose(out[n], ref[n], atol=1e-12) for n in fast)
    # Per step really means per step: rates (0.2, 0) equal one step at 0.2.
    one = adapt(model, fast, ep.support, steps=1, lr=0.2)
    zero_second = {n: torch.tensor([0.2, 0.0], dtype=p.dtype).view((2,) + (1,) * p.dim()) for n, p in fast.items()}
    out = adapt(model, fast, ep.support, steps=2, lr=zero_second)
    assert all(torch.allclose(out[n], one[n], atol=1e-12) for n in fast)


def test_trajectory_holds_every_step_and_zero_steps_is_identity():
    model, sel, ep = setup("gpt2")
    fast = sel.fast_params(model)
    traj = adapt_trajectory(model, fast, ep.support, steps=3, lr=0.1)
    assert len(traj.params) == 4 and len(traj.losses) == 3
    assert traj.losses[0] > traj.losses[-1]
    same = adapt(model, fast, ep.support, steps=0, lr=0.1)
    assert all(same[n] is fast[n] for n in fast)


def test_sdpa_math_kernel_equals_eager_second_order():
    ep = episodes(1)[0]
    adapter = AdapterConfig(rank=2, layers="top:2")
    grads = []
    for attn in ("sdpa", "eager"):
        model = make_model("llama", adapter=adapter, attn=attn)
        sel = select_parameters(model, adapter)
        sel.apply(model)
        fast = sel.fast_params(model)
        metalm.lm_loss(model, adapt(model, fast, ep.support, steps=2, lr=0.3), ep.query).backward()
        grads.append({n: p.grad.clone() for n, p in fast.items()})
    # Llama's eager attention runs softmax in fp32 even for fp64 models, hence the relative tolerance.
    for n in grads[0]:
        assert (grads[0][n] - grads[1][n]).norm() <= 1e-5 * grads[1][n].norm(), n


def test_attention_without_double_backward_is_refused(monkeypatch):
    model, sel, ep = setup("gpt2")
    # flash-attention kernels cannot be installed here; pretend the model was loaded with one.
    monkeypatch.setattr(metalm.inner, "attention_implementation", lambda m: "flash_attention_2")
    with pytest.raises(metalm.MetalmError, match="no double backward"):
        adapt(model, sel.fast_params(model), ep.support, steps=1, lr=0.1)
    adapt(model, sel.fast_params(model), ep.support, steps=1, lr=0.1, first_order=True)  # allowed


@pytest.mark.parametrize("kwargs, field", [
    (dict(steps=-1, lr=0.1), "steps"),
    (dict(steps=1, lr=float("nan")), "lr"),
    (dict(steps=1, lr={}), "lr"),
    (dict(steps=1, lr=0.1, optimizer="rmsprop"), "optimizer"),
    (dict(steps=1, lr=0.1, clip_grad_norm=0.0), "clip_grad_norm"),
])
def test_bad_arguments_name_the_argument(kwargs, field):
    model, sel, ep = setup("gpt2")
    with pytest.raises(ConfigError) as err:
        adapt(model, sel.fast_params(model), ep.support, **kwargs)
    assert err.value.field == field


def test_bad_rate_shape_is_named():
    model, sel, ep = setup("gpt2")
    fast = sel.fast_params(model)
    lr = {n: torch.ones(7) for n in fast}
    with pytest.raises(ConfigError, match=r"lr\[.*lora_A.*\]"):
        adapt(model, fast, ep.support, steps=1, lr=lr)
    lr = {n: torch.ones((1,) + (1,) * p.dim()) for n, p in fast.items()}
    with pytest.raises(ConfigError, match="per-step rates for 1 steps"):
        adapt(model, fast, ep.support, steps=2, lr=lr)


def test_help_documents_the_contract():
    """help(adapt) states the call's contract, help(UpdateRule) what each step computes."""
    def help_of(name):
        return subprocess.run([sys.executable, "-c", f"import metalm; help(metalm.{name})"], capture_output=True,
                              text=True, check=True, env={"PAGER": "cat", "PATH": ""}).stdout

    out = help_of("adapt")
    for phrase in ("functional_call", "UpdateRule", "steps=5, lr=0.1", "-100", "never modified", "frozen",
                   "recompute", "check_finite"):
        assert phrase in out, phrase
    assert "the same arguments" in help_of("adapt_trajectory")
    out = help_of("UpdateRule")
    for phrase in ("first_order", "p - lr * g.detach()", "Meta-SGD", "clip_grad_norm", "adam", "proximal"):
        assert phrase in out, phrase


def test_the_rule_and_its_keywords_give_the_same_adaptation(lora):
    """adapt(..., UpdateRule(...)) and adapt(..., steps=, lr=, ...) are one signature; adapt_trajectory
    takes the same; mixing the two forms, an unknown keyword or a missing step count is one ConfigError."""
    from metalm import MetaConfig

    model = make_model("llama", adapter=lora)
    sel = metalm.select_parameters(model, lora, MetaConfig())
    batch = episodes(1)[0].support
    fast = {n: p.detach() for n, p in sel.fast_params(model).items()}
    rule = metalm.UpdateRule(steps=2, lr=0.3, optimizer="adam", clip_grad_norm=1.0)
    a = metalm.adapt(model, fast, batch, rule)
    b = metalm.adapt(model, fast, batch, steps=2, lr=0.3, optimizer="adam", clip_grad_norm=1.0)
    c = metalm.adapt_trajectory(model, fast, batch, rule).params[-1]
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ConfigError, match="steps: give an UpdateRule or its fields as keywords, not both"):
        metalm.adapt(model, fast, batch, rule, steps=3)
    with pytest.raises(ConfigError, match="stesp: is not an argument of the inner loop"):
        metalm.adapt(model, fast, batch, stesp=2, lr=0.1)
    with pytest.raises(ConfigError, match="steps: is required"):
        metalm.adapt_trajectory(model, fast, batch, lr=0.1)
    inner = metalm.InnerConfig(steps=3, lr=0.2, optimizer="adam", vmap=True, vmap_chunk=2, cache_prefix=False)
    assert metalm.UpdateRule.of(inner, first_order=True) == metalm.UpdateRule(3, 0.2, True, "adam")


def test_frozen_weights_are_used_not_adapted(lora):
    """adapt(frozen=...) equals adapting a copy of the model that holds those values, leaves them alone,
    and refuses a fast weight among them."""
    from metalm import MetaConfig

    model = make_model("llama", adapter=lora)
    sel = metalm.select_parameters(model, lora, MetaConfig(shared="norms"))
    batch = episodes(1)[0].support
    fast = {n: p.detach() for n, p in sel.fast_params(model).items()}
    shared = {n: p.detach() + 0.1 for n, p in sel.meta_params(model).items() if n in sel.shared}
    ours = metalm.adapt(model, fast, batch, steps=2, lr=0.3, frozen=shared)
    copy = with_values(model, shared)
    theirs = metalm.adapt(copy, fast, batch, steps=2, lr=0.3)
    assert set(ours) == set(fast) and all(torch.allclose(ours[n], theirs[n], atol=1e-12) for n in fast)
    plain = metalm.adapt(model, fast, batch, steps=2, lr=0.3)
    assert not all(torch.allclose(ours[n], plain[n], atol=1e-6) for n in fast)  # the frozen values mattered
    with pytest.raises(ConfigError, match="is a fast weight"):
        metalm.adapt(model, fast, batch, steps=1, lr=0.3, frozen={next(iter(fast)): next(iter(fast.values()))})
