"""MetaICL and in-context rows against hand-built rows and plain Hugging Face backward passes."""

import json
import os

import pytest
import torch
from transformers import AutoTokenizer

import metalm
from metalm.data import CollateConfig, tensorize
from metalm.data.collate import encode
from metalm.data.demos import demonstrations, in_context, training_rows
from metalm.data.episode import Example, TextEpisode
from metalm.models import save_tiny_model

from .conftest import grads_of, reference_loss, with_values
from .data.fixtures import corpus


def _episode() -> TextEpisode:
    def ex(word: str, label: int) -> Example:
        return Example(f"W: {word}\nA:", [" yes", " no"][label], [" yes", " no"], label)
    return TextEpisode("short", "classification", [ex("apple", 0), ex("river", 1)], [ex("stone", 1), ex("lamp", 0)],
                       ["yes", "no"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp("m") / "model", corpus(), "llama")
    return path, AutoTokenizer.from_pretrained(path)


def _meta_gradient(path, tok, shared: str, algorithm: str, config: dict):
    """A float64 tiny model with LoRA on its top layer (B drawn, so gradients reach A), the algorithm's
    meta-gradient on ``_episode()``: ``(model, selection, initial values, episode, gradients)``."""
    adapter = metalm.AdapterConfig(rank=2, layers="top:1")
    model = metalm.apply_adapter(metalm.load_model(path, dtype=torch.float64), adapter)
    sel = metalm.select_parameters(model, adapter, metalm.MetaConfig(shared=shared))
    learner = metalm.build_algorithm(algorithm, model, sel, config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    values = {n: p.detach().clone() for n, p in sel.meta_params(model).items()}
    episode = tensorize(_episode(), tok, CollateConfig(max_length=64), learner.queries)
    for p in learner.meta_parameters().values():
        p.grad = None
    learner.meta_gradients([episode])
    return model, sel, values, episode, {n: p.grad.clone() for n, p in sel.meta_params(model).items()}


@pytest.mark.parametrize("channel", [False, True])
def test_metaicl_gradient_is_the_plain_loss_of_hand_built_rows(tiny, channel):
    path, tok = tiny
    model, sel, values, episode, ours = _meta_gradient(path, tok, "norms", "metaicl",
                                                      {"queries": "channel" if channel else "direct"})

    # The rows by hand: demonstrations (their own segment, with BOS), the query, the target.
    text = _episode()
    rows, targets = [], []
    for q in text.query:
        if channel:
            demos = "\n\n".join(f"{s.answer.strip()}\n{s.prompt}" for s in text.support) + "\n\n"
            head = tok(demos)["input_ids"] + tok(q.answer.strip() + "\n", add_special_tokens=False)["input_ids"]
            target = tok(q.prompt, add_special_tokens=False)["input_ids"]
        else:
            demos = "\n\n".join(s.prompt + s.answer for s in text.support) + "\n\n"
            head = tok(demos)["input_ids"] + tok(q.prompt, add_special_tokens=False)["input_ids"]
            target = tok(q.answer, add_special_tokens=False)["input_ids"]
        rows.append(head + target)
        targets.append([-100] * len(head) + target)
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    assert torch.equal(episode.query["input_ids"][:, :width].masked_fill(mask == 0, 0), ids)
    clone = with_values(model, values)
    # The HF forward's logits, cross-entropy in float64 (HF's own loss computes in float32).
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    theirs = grads_of(clone, list(values), lambda m: reference_loss(m, batch))
    for n in values:
        assert torch.allclose(ours[n], theirs[n], atol=1e-10), n
    assert any(ours[n].abs().sum() > 0 for n in sel.fast) and any(ours[n].abs().sum() > 0 for n in sel.shared)


def test_demonstrations_are_built_once_and_cut_oldest_first(tiny):
    """Training rows and evaluation's in-context examples are the same text; a long row loses its
    oldest demonstrations' tokens, never the query or its answer."""
    _, tok = tiny
    text = _episode()
    rows = training_rows(text)
    demos = demonstrations(text.support)
    assert rows == [in_context(demos, q) for q in text.query]
    assert rows[0].context == "W: apple\nA: yes\n\nW: river\nA: no\n\n" and rows[0].prompt == "W: stone\nA:"
    full, n_answer = encode(rows[0], tok, CollateConfig(max_length=256))
    cut, n_cut = encode(rows[0], tok, CollateConfig(max_length=len(full) - 3))
    query = tok(rows[0].prompt, add_special_tokens=False)["input_ids"] + tok(rows[0].answer, add_special_tokens=False)[
        "input_ids"]
    assert n_cut == n_answer and cut[-len(query):] == full[-len(query):] == query  # query and answer intact
    assert cut[1:] == full[4:] and cut[0] == full[0] == tok.bos_token_id  # the oldest 3 tokens after BOS went


def test_metaicl_and_in_context_runs_are_scored_in_context(tiny, tmp_path):
    """A MetaICL run's row is not adapted and sees the demonstrations; an in-context MAML run's row is
    adapted and sees them; their budgets say so."""
    from metalm.algorithms import algorithm_class, algorithm_config
    from metalm.eval.inits import init_of
    from metalm.eval.rows import budget

    assert algorithm_class("metaicl").evaluation(algorithm_config("metaicl", {})) == {"adapt": False, "queries": "direct"}
    maml = algorithm_config("fomaml", {"queries": "channel"})
    assert algorithm_class("fomaml").evaluation(maml) == {"adapt": True, "queries": "channel"}
    # The earlier name of MetaICL's field (runs written before it was renamed) reads the same.
    assert algorithm_config("metaicl", {"scoring": "channel"}).queries == "channel"
    path, _ = tiny
    adapter = metalm.AdapterConfig(rank=2, layers="top:1")
    model = metalm.apply_adapter(metalm.load_model(path, dtype=torch.float64), adapter)
    sel = metalm.select_parameters(model, adapter)
    init = init_of(metalm.build_algorithm("metaicl", model, sel, {}))
    assert (init.adapt, init.queries) == (False, "direct") and budget(init) == "none; scored in context (direct)"
    plain = init_of(metalm.build_algorithm("metaicl", model, sel, {}), trained=False)
    assert (plain.adapt, plain.queries) == (True, "plain")


def test_metaicl_and_in_context_fomaml_train_and_evaluate_from_the_cli(tmp_path, monkeypatch, capsys):
    """metalm train with algorithm metaicl and with fomaml + in-context queries; metalm eval scores both
    rows in context (MetaICL without adaptation) beside the baselines, on the same episodes."""
    from metalm.cli import main

    from .data.fixtures import make_world

    world = make_world(tmp_path / "world", outer={"lr": 0.01, "meta_batch": 2}, max_steps=2, val_every=2,
                       val_episodes=1, checkpoint_every=2)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    micl, both = tmp_path / "metaicl", tmp_path / "fomaml-icl"
    assert main(["train", str(world["config"]), "--run-dir", str(micl), "--quiet", "algorithm={name: metaicl}"]) == 0
    assert main(["train", str(world["config"]), "--run-dir", str(both), "--quiet",
                 "algorithm={name: fomaml, queries: direct, inner: {steps: 1, lr: 0.1, first_order: true}}"]) == 0
    log = [json.loads(line) for line in (micl / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and "val_query_loss" in log[-1]
    out = tmp_path / "eval.json"
    assert main(["eval", "--run-dir", str(micl), "--run-dir", str(both), "--shots", "1", "--episodes", "2",
                 "--ways", "2", "--queries", "1", "--methods", "zeroshot,icl,meta", "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert {r["method"] for r in report["macro"]} == {"zeroshot", "icl", "meta:metaicl+icl", "meta:fomaml+icl"}
    assert report["budgets"]["meta:metaicl+icl"] == "none; scored in context (direct)"
    assert report["budgets"]["meta:fomaml+icl"] == "sgd lr 0.1, 1 steps; scored in context (direct)"


def test_gradient_plus_in_context_meta_gradient_by_a_second_path(tiny):
    """MAML with queries after the support set (gradient + in-context adaptation): the meta-gradient
    equals a hand-written second-order loop through the plain HF forward (float64)."""
    from torch.func import functional_call
    from torch.nn.attention import SDPBackend, sdpa_kernel

    path, tok = tiny
    model, sel, values, episode, ours = _meta_gradient(path, tok, "none", "maml",
                                                      {"inner": {"steps": 2, "lr": 0.3}, "queries": "direct"})

    # By hand: query rows = demonstrations + query + answer (built here from the text), SGD steps
    # with create_graph through the HF forward, the loss the mean cross-entropy over target tokens.
    text = _episode()
    demos = "\n\n".join(s.prompt + s.answer for s in text.support) + "\n\n"
    rows, targets = [], []
    for q in text.query:
        head = tok(demos)["input_ids"] + tok(q.prompt, add_special_tokens=False)["input_ids"]
        target = tok(q.answer, add_special_tokens=False)["input_ids"]
        rows.append(head + target)
        targets.append([-100] * len(head) + target)
    width = max(len(r) for r in rows)
    query = {"input_ids": torch.tensor([r + [0] * (width - len(r)) for r in rows]),
             "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
             "labels": torch.tensor([t + [-100] * (width - len(t)) for t in targets])}
    assert torch.equal(episode.query["input_ids"][:, :width].masked_fill(query["attention_mask"] == 0, 0),
                       query["input_ids"])
    clone = with_values(model, values)

    def loss(params, batch):
        logits = functional_call(clone, params, (), {"input_ids": batch["input_ids"],
                                                     "attention_mask": batch["attention_mask"]}).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                                 ignore_index=-100)

    theta = {n: v.clone().requires_grad_(True) for n, v in values.items()}
    phi = dict(theta)
    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernel has no double backward
        for _ in range(2):
            grads = torch.autograd.grad(loss(phi, episode.support), list(phi.values()), create_graph=True)
            phi = {n: p - 0.3 * g for (n, p), g in zip(phi.items(), grads, strict=True)}
        theirs = dict(zip(theta, torch.autograd.grad(loss(phi, query), list(theta.values())), strict=True))
    for n in values:
        assert torch.allclose(ours[n], theirs[n], atol=1e-10), n
    assert all(ours[n].abs().sum() > 0 for n in sel.fast)


def test_synthetic_in_context_rows_are_the_demonstrations_then_the_query():
    tasks = metalm.SyntheticTasks(vocab_size=32, n_classes=2, seq_len=3, key_pool=2, label_pool=2)
    gen = torch.Generator().manual_seed(0)
    plain = tasks.episode(2, 3, gen)
    ep = tasks.in_context(plain, gen)
    assert ep.support is plain.support and ep.query["input_ids"].shape == (6, 4 * 3 + 3)
    demos = ep.query["input_ids"][:, :12].reshape(6, 4, 3)
    for row in demos:  # every query row carries the same demonstrations: the support rows, reordered
        assert sorted(map(tuple, row.tolist())) == sorted(map(tuple, plain.support["input_ids"].tolist()))
        assert torch.equal(row, demos[0])
    assert torch.equal(ep.query["input_ids"][:, 12:], plain.query["input_ids"])
    assert (ep.query["labels"][:, :-1] == -100).all() and torch.equal(ep.query["labels"][:, -1],
                                                                        plain.query["input_ids"][:, -1])


def _demonstrated_share(model, episodes, pool: list[int]) -> float:
    """The mean probability mass, among the pool's label tokens, that the model puts on the labels the
    episode's demonstrations show (at each query's answer position)."""
    total = 0.0
    with torch.no_grad():
        for ep in episodes:
            shown = torch.tensor([pool.index(int(t)) for t in ep.support["input_ids"][:, -1].unique()])
            logits = torch.func.functional_call(model, {}, (ep.query["input_ids"],)).logits[:, -2]
            total += float(logits[:, pool].softmax(-1)[:, shown].sum())
    return total / sum(len(ep.query["input_ids"]) for ep in episodes)


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.parametrize("seed", [int(s) for s in os.environ.get("METALM_LEARNING_SEEDS", "0").split(",")])
def test_metaicl_learns_to_answer_from_the_demonstrations(seed):
    """Each episode draws its 2 labels from a pool of 12 tokens, so only its demonstrations say which
    labels it has. A model blind to the context puts in expectation at most 2/12 of its label mass on
    them (whatever its marginal: each label is shown in 1/6 of the episodes); MetaICL-trained weights
    put at least 0.9 there after 150 steps.

    Measured before choosing these numbers, seeds 0-4 on 1 and 2 threads: 0.16-0.18 before, 0.905-0.942
    after 100 steps, 0.955-0.958 after 150, identical on both thread counts; a margin of 0.055. Unlike
    the key -> label association (a plateau, then a jump whose timing depended on the seed and the CPU),
    learning to copy the shown labels needs no phase transition to break."""
    share, train = metaicl_on_shown_labels(seed)
    assert share() < 0.25  # 1/6 expected for any context-blind model
    train(150)
    assert share() >= 0.9


def metaicl_on_shown_labels(seed: int):  # noqa: ANN201 - (share, train) closures
    """The test's world: a random 2-layer Llama, MetaICL, episodes whose 2 labels come from 12 tokens.
    Returns ``share()`` (the held-out label mass on the shown labels) and ``train(steps)``."""
    tasks = metalm.SyntheticTasks(vocab_size=48, n_classes=2, seq_len=3, key_pool=2, label_pool=12)
    pool = list(range(1 + tasks.key_pool, 1 + tasks.key_pool + tasks.label_pool))
    config = metalm.tiny_config("llama", vocab_size=48, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4)
    adapter = metalm.AdapterConfig(kind="full")
    model = metalm.apply_adapter(metalm.load_model(config, seed=seed), adapter)
    sel = metalm.select_parameters(model, adapter, metalm.MetaConfig(shared="none"))
    learner = metalm.build_algorithm("metaicl", model, sel, {})
    held_out = torch.Generator().manual_seed(123)
    test = [tasks.in_context(ep, held_out) for ep in tasks.episodes(50, 1, 4, held_out)]
    opt = torch.optim.AdamW(learner.meta_parameters().values(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)

    def train(steps: int) -> None:
        for _ in range(steps):
            learner.step([tasks.in_context(ep, gen) for ep in tasks.episodes(16, 1, 8, gen)], opt)

    return (lambda: _demonstrated_share(model, test, pool)), train
