"""iMAML: implicit meta-gradients against a closed form and against unrolled MAML through the same
regularized inner problem."""

import pytest
import torch

import metalm
from metalm import AdapterConfig, ConfigError, MetaConfig, build_algorithm, select_parameters
from metalm.implicit import conjugate_gradient, implicit_gradient, neumann
from metalm.losses import prepare_batch, proximal_loss

from .conftest import episodes, make_model


def _quadratic(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = m @ m.T / n  # symmetric positive semi-definite Hessian of L_s(phi) = phi'A phi/2 - b'phi
    return a, torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("solver, steps", [("cg", 6), ("neumann", 200)])
def test_implicit_gradient_equals_the_closed_form_on_a_quadratic(solver, steps):
    """L_s(phi) = phi'A phi/2 - b'phi: phi*(theta) = (A + lam I)^-1 (b + lam theta) in closed form; the
    meta-gradient of L_q(phi) = c'phi + |phi|^2/2 is d/dtheta L_q(phi*(theta)), by autograd through it."""
    a, b, c = _quadratic()
    lam = 4.0 if solver == "cg" else 3.0 * float(torch.linalg.eigvalsh(a).max())  # Neumann needs rho(A) < lam
    theta = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    eye = torch.eye(6, dtype=torch.float64)
    phi = torch.linalg.solve(a + lam * eye, b + lam * theta)
    (expected,) = torch.autograd.grad((c * phi).sum() + 0.5 * (phi ** 2).sum(), theta)
    query_grad = [(c + phi).detach()]
    (got,) = implicit_gradient(lambda v: [a @ v[0]], query_grad, lam, steps, solver)
    assert torch.allclose(got, expected, rtol=0, atol=1e-5)
    assert torch.allclose(got, torch.linalg.solve(eye + a / lam, query_grad[0]), rtol=0, atol=1e-10)


def test_solvers_take_lists_of_tensors():
    a, b, _ = _quadratic(4)
    spd = a + torch.eye(4, dtype=torch.float64)
    x, y = conjugate_gradient(lambda v: [spd @ v[0], 2 * v[1]], [b, torch.ones(2, 3, dtype=torch.float64)], 10)
    assert torch.allclose(x, torch.linalg.solve(spd, b), atol=1e-10) and torch.allclose(y, torch.full((2, 3), 0.5, dtype=torch.float64))
    (z,) = neumann(lambda v: [0.5 * v[0]], [torch.ones(3, dtype=torch.float64)], lam=1.0, steps=60)
    assert torch.allclose(z, torch.full((3,), 1 / 1.5, dtype=torch.float64), atol=1e-12)


def test_imaml_approaches_unrolled_maml_as_the_inner_loop_converges(arch):
    """Unrolled second-order MAML through the regularized inner problem (the prox anchor is the live
    initialization) converges to the implicit gradient as its steps k grow: the inner iteration
    contracts by |1 - lr (lam + h)| per step (h: the support Hessian's eigenvalues; about 0.6-0.7
    here), so the gap shrinks geometrically (measured at k = 5, 20, 80: GPT-2 3e-3, 1e-6, 3e-12;
    Llama 2e-2, 6e-5, 2e-9); 1e-6 at k = 80 leaves a factor 500 for other machines."""
    lam, lr = 4.0, 0.1
    adapter = AdapterConfig(rank=2, alpha=4.0, layers="top:1")
    model = make_model(arch, adapter=adapter)
    sel = select_parameters(model, adapter, MetaConfig())
    ep = episodes(1)[0]
    gaps = []
    for k in (5, 20, 80):
        fast = sel.fast_params(model)
        phi = metalm.adapt(model, fast, prepare_batch(ep.support), steps=k, lr=lr, loss_fn=proximal_loss(fast, lam))
        unrolled = torch.autograd.grad(metalm.lm_loss(model, phi, ep.query), list(fast.values()))
        learner = build_algorithm("imaml", model, sel, {"inner": {"steps": k, "lr": lr, "proximal": lam},
                                                        "cg_steps": 100})
        for p in learner.meta_parameters().values():
            p.grad = None
        metrics = learner.meta_gradients([ep])
        implicit = [p.grad for p in fast.values()]
        gap = sum(((x - y) ** 2).sum() for x, y in zip(implicit, unrolled, strict=True)) ** 0.5
        gaps.append(float(gap / sum((y ** 2).sum() for y in unrolled) ** 0.5))
        assert set(metrics) == {"query_loss", "query_accuracy"}
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-6, gaps


def test_imaml_config_errors():
    adapter = AdapterConfig(rank=2)
    model = make_model("gpt2", adapter=adapter)
    with pytest.raises(ConfigError, match="meta.shared"):
        build_algorithm("imaml", model, select_parameters(model, adapter, MetaConfig(shared="norms")))
    with pytest.raises(ConfigError) as err:
        metalm.algorithm_config("imaml", {"inner": {"proximal": 0}})
    assert err.value.field == "algorithm.inner.proximal"
    inner = metalm.algorithm_config("imaml", {"inner": {"steps": 3}}).inner
    assert inner.first_order is True and inner.proximal == 1.0


def test_the_proximal_term_is_the_inner_loops_own():
    """adapt(proximal=lam) equals adapt with the regularized loss written out, and a zero-step
    anchor: so evaluation adapts an iMAML run on the problem it was trained on."""
    adapter = AdapterConfig(rank=2, alpha=4.0, layers="top:1")
    model = make_model("gpt2", adapter=adapter)
    fast = {n: p.detach() for n, p in select_parameters(model, adapter).fast_params(model).items()}
    support = prepare_batch(episodes(1)[0].support)
    ours = metalm.adapt(model, fast, support, steps=3, lr=0.2, first_order=True, proximal=5.0)
    by_hand = metalm.adapt(model, fast, support, steps=3, lr=0.2, first_order=True, loss_fn=proximal_loss(fast, 5.0))
    plain = metalm.adapt(model, fast, support, steps=3, lr=0.2, first_order=True)
    assert all(torch.equal(ours[n], by_hand[n]) for n in fast)
    assert any(not torch.allclose(ours[n], plain[n]) for n in fast)
    with pytest.raises(ConfigError, match="proximal"):
        metalm.InnerConfig(proximal=-1.0)


def test_an_imaml_run_trains_and_is_evaluated_on_its_regularized_problem(tmp_path, monkeypatch):
    from metalm.eval import EvalConfig, Harness, eval_tasks
    from metalm.eval.rows import budget
    from metalm.run import build_registry, load_run, load_train_config
    from metalm.train import MetaTrainer

    from .data.fixtures import make_world

    world = make_world(tmp_path, max_steps=2, val_every=2, checkpoint_every=1)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    config = load_train_config(world["config"], {"algorithm": {"name": "imaml", "inner": {"steps": 2, "lr": 0.1,
                                                                                           "proximal": 2.0}}})
    last = MetaTrainer(config, tmp_path / "run").train(progress=False)
    assert last["step"] == 2 and "val_query_loss" in last and last["skipped_nonfinite"] == 0
    run = load_run(tmp_path / "run")
    assert any(not torch.equal(run.base[k], v) for k, v in run.trained.items())
    harness = Harness.from_run(run, EvalConfig(shots=[1], episodes=1, ways=2, queries=1, methods=["zeroshot", "meta"]))
    assert budget(harness.rows()["meta"].init) == "sgd lr 0.1, 2 steps, proximal 2"
    assert harness.run(eval_tasks(build_registry(run.config), ["toy_cls"]))["macro"]
