"""The evaluation harness against independent computations: HF forward log-probs, HF generate, hand-computed metrics."""

import dataclasses
import json
import math

import pytest
import torch
from transformers import AutoTokenizer

import metalm
from metalm.data import CollateConfig, EpisodeSampler, SamplerConfig
from metalm.data.episode import Example
from metalm.errors import ConfigError, MetalmError
from metalm.eval import BASELINES, EvalConfig, Harness, exact_match, greedy_generate, mean_ci95, option_scores, token_f1
from metalm.eval.budgets import _versus_runner_up, choose_finetune, inner_steps_sweep
from metalm.eval.rows import FinetuneChoice
from metalm.models import save_tiny_model
from metalm.train import TrainConfig, build_model

from .data.fixtures import corpus


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp("m") / "model", corpus(), "gpt2")
    model = metalm.load_model(path, dtype=torch.float64)
    return model, AutoTokenizer.from_pretrained(path), path


def test_option_scores_match_a_full_forward(tiny):
    model, tok, _ = tiny
    ex = Example("Q: Is the apple number 1 yes?\nA:", " yes", [" yes", " no", " unsure maybe"], 0)
    scores = option_scores(model, {}, [ex, ex], tok, CollateConfig(max_length=64), batch_size=2)
    assert scores[0] == scores[1]
    for option, score in zip(ex.options, scores[0], strict=True):
        prompt = tok(ex.prompt)["input_ids"]
        answer = tok(option, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0], -1)
        expected = sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(answer)) / len(answer)
        assert score == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_greedy_generation_matches_hf_generate(tiny, kv_cache):
    """A batch of prompts of different lengths (left-padded) against HF generate on each alone."""
    model, tok, _ = tiny
    prompts = ["Spell apple backwards:", "Which follows river? Reversed:"]
    ours = greedy_generate(model, {}, prompts, tok, max_new_tokens=6, stop="", kv_cache=kv_cache)
    for prompt, text in zip(prompts, ours, strict=True):
        ids = tok(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        assert text == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_metrics_by_hand():
    assert exact_match("The Apple.", ["apple"]) == 1.0 and exact_match("apples", ["apple"]) == 0.0
    assert token_f1("red big apple", ["big apple pie"]) == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    assert token_f1("", [""]) == 1.0 and token_f1("x", ["y", "x"]) == 1.0
    mean, ci = mean_ci95([0.5, 1.0, 0.0, 0.5])
    sd = math.sqrt((0 + 0.25 + 0.25 + 0) / 3)
    assert mean == 0.5 and ci == pytest.approx(3.1824463 * sd / 2)  # t(0.975, 3), from a table
    assert mean_ci95([0.7]) == (0.7, 0.0)


def _learner(path, dtype="float64", **algorithm):
    # float64: scores computed by different batchings agree to ~1e-13, far below any gap between options.
    config = TrainConfig(model=path, dtype=dtype, adapter=metalm.AdapterConfig(rank=2),
                         collate=CollateConfig(max_length=64),
                         algorithm={"name": "fomaml", "inner": {"steps": 1, "lr": 0.1}, **algorithm})
    tok, model, _, algo = build_model(config, torch.device("cpu"))
    base = {k: v.detach().clone() for k, v in algo.meta_parameters().items()}
    return tok, algo, base


def test_harness_pairs_episodes_and_keeps_the_model(tiny, registry):
    _, _, path = tiny
    tok, algo, base = _learner(path)
    trained = {k: v + 0.01 * torch.randn_like(v) for k, v in base.items()}
    config = EvalConfig(shots=[1, 2], episodes=2, ways=2, queries=1, methods=["zeroshot", "icl", "finetune", "meta"],
                        finetune_steps=None)
    harness = Harness.from_learner(algo, tok, base, trained, config)
    tasks = [registry["toy_cls"], registry["toy_gen"]]
    eps = harness.episodes(tasks[0], 1)
    assert harness.episodes(tasks[0], 1) is eps  # every method reads the same episodes
    report = harness.run(tasks)
    assert {(r["method"], r["task"], r["shots"]) for r in report["results"]} == \
        {(m, t.name, k) for m in ("zeroshot", "icl", "finetune", "meta") for t in tasks for k in (1, 2)}
    assert all(0 <= r["accuracy"] <= 1 and r["episodes"] == 2 for r in report["results"])
    assert report["chance"]["toy_cls"] == 0.5 and report["chance"]["toy_gen"] == 0.0
    assert report["majority"]["toy_cls"] == 0.5  # 2-way, one query per class
    assert all(torch.equal(v, base[k]) for k, v in algo.meta_parameters().items())  # the model is untouched
    # The same episodes scored twice give the same numbers.
    again = Harness.from_learner(algo, tok, base, trained, config).run(tasks)
    assert again["results"] == report["results"]


def test_a_generation_tasks_metric_is_read(tiny, registry):
    """A generation task's YAML ``metric`` decides its score: with fixed predictions (the first
    reference word plus a wrong one) exact match is 0 and token F1 is 2/3 on every query."""
    from metalm.data import Task

    _, _, path = tiny
    tok, algo, base = _learner(path)
    config = EvalConfig(shots=[1], episodes=2, ways=2, queries=2, methods=["zeroshot"])
    scores = {}
    for metric in ("exact_match", "token_f1"):
        task = Task(dataclasses.replace(registry["toy_gen"].spec, name=f"gen_{metric}", metric=metric))
        harness = Harness.from_learner(algo, tok, base, base, config)
        eps = harness.episodes(task, 1)
        first = {q.prompt: q.references[0].split()[0] for ep in eps for q in ep.query}
        assert all(len(q.references[0].split()) == 1 for ep in eps for q in ep.query)  # one-word answers
        harness._generate = lambda params, prompts, first=first: [first[p] + " zzz" for p in prompts]
        report = harness.summarize(harness.measure([task]), [task])
        assert report["metrics"] == {task.name: metric}
        scores[metric] = report["per_episode"][f"zeroshot|{task.name}|1"]
    assert scores == {"exact_match": [[0.0, 0.0]], "token_f1": [[pytest.approx(2 / 3)] * 2]}


def test_shared_work_gives_the_reference_paths_accuracies(tiny, registry):
    """Prefix reuse, batching across episodes and one trajectory per grid point against the plain
    path that computes every method on every episode on its own."""
    _, _, path = tiny
    tok, algo, base = _learner(path)
    trained = {k: v + 0.05 * torch.randn_like(v) for k, v in base.items()}
    tasks = [registry["toy_cls"], registry["toy_mc"], registry["toy_gen"]]
    reports = []
    for shared in (True, False):
        config = EvalConfig(shots=[2], episodes=2, seeds=2, ways=3, queries=2, methods=[*BASELINES, "meta"],
                            finetune_lrs=[0.3, 1.0], finetune_adam_lrs=[0.01], finetune_steps=[1, 3],
                            shared_work=shared)
        harness = Harness.from_learner(algo, tok, base, trained, config)
        choice = choose_finetune(harness, [registry["toy_cls"]])
        reports.append((choice.grid, harness.measure(tasks, finetune=choice)))
    (grid_a, a), (grid_b, b) = reports
    assert [g["val_accuracy"] for g in grid_a] == [g["val_accuracy"] for g in grid_b]
    assert a == b


def test_a_support_set_of_uneven_lengths_is_split_and_adapts_like_the_whole_batch(tiny, registry, monkeypatch):
    """With shared work the support batch's rows are grouped by length (no loss computed on padding,
    metalm.losses.split_by_length); fine-tuning from it reaches the weights the reference path's
    whole padded batch reaches (float64: rounding only) and the same query accuracies. (Rows of 36
    and 64 tokens: no per-row slack, which lets rows this short go together.)"""
    import metalm.losses

    monkeypatch.setattr(metalm.losses, "PAD_SLACK", 0)
    _, _, path = tiny
    tok, algo, base = _learner(path)
    adapted, accuracies = [], []
    for shared in (True, False):
        config = EvalConfig(shots=[2], episodes=2, ways=3, queries=2, methods=["finetune"], shared_work=shared,
                            finetune_steps=None)
        harness = Harness.from_learner(algo, tok, base, None, config)
        episodes = [dataclasses.replace(ep, support=[dataclasses.replace(ex, prompt="Answer. " * (1 + 9 * (i % 3 == 0))
                                                                         + ex.prompt)
                                                     for i, ex in enumerate(ep.support)])
                    for ep in harness.episodes(registry["toy_cls"], 2)]
        support = harness.support(episodes[0], 3)
        assert ("parts" in support) == shared
        init = harness.base.with_budget("sgd", 1.0, 3)
        adapted.append(harness.adapt(init, support, [3])[0])
        accuracies.append(harness.block(list(harness.rows().values()), episodes).accuracy)
    assert adapted[0].keys() == adapted[1].keys()
    assert all(torch.allclose(adapted[0][k], adapted[1][k], rtol=1e-9, atol=1e-12) for k in adapted[0])
    assert any(not torch.equal(adapted[0][k], base_k) for k, base_k in harness.base.params().items()
               if k in adapted[0])  # the steps moved the weights
    assert accuracies[0] == accuracies[1]


def _four_rows(path, kind_b="meta"):
    """A learner, its pretrained start, moved weights, and four rows: ``a`` unadapted in context, ``b``
    unadapted plain (of kind ``kind_b``), ``c`` adapting from the moved weights, ``d`` scored by channel."""
    from metalm.eval.fewshot import Trained
    from metalm.eval.inits import init_from_values

    tok, algo, base = _learner(path)
    torch.manual_seed(0)  # the moved weights are fixed: every check below is one fixed computation
    start = init_from_values(algo, base, trained=False)
    moved = init_from_values(algo, {k: v + 0.05 * torch.randn_like(v) for k, v in base.items()})
    rows = [Trained("a", "meta", dataclasses.replace(start, adapt=False, queries="direct")),
            Trained("b", kind_b, dataclasses.replace(start, adapt=False)),
            Trained("c", "meta", moved), Trained("d", "meta", dataclasses.replace(start, queries="channel"))]
    return tok, algo, start, moved, rows


def test_calibrated_trained_rows(tiny, registry):
    """``calibrate_trained``: an untrained in-context row (MetaICL before training) scores exactly as
    icl-cal, an untrained plain row as zeroshot-cal; an adapting row's ``-cal`` twin scores the weights
    the reference path adapts again on its own; channel rows get no twin."""
    tok, algo, start, _, rows = _four_rows(tiny[2])
    tasks = [registry["toy_cls"], registry["toy_mc"]]
    got = []
    for shared in (True, False):
        config = EvalConfig(shots=[2], episodes=8, ways=3, queries=2, calibrate_trained=True, shared_work=shared,
                            methods=["icl", "zeroshot-cal", "icl-cal", "meta"])
        harness = Harness(algo.model, tok, start, config, rows, algo.selection.lowest_adapted_layer())
        assert list(harness.rows()) == ["zeroshot-cal", "icl", "icl-cal", "a", "a-cal", "b", "b-cal", "c", "c-cal", "d"]
        got.append(harness.measure(tasks))
        assert harness.summarize(got[-1], tasks)["budgets"]["c-cal"] == "sgd lr 0.1, 1 steps; calibrated"
    data = got[0]
    for t in tasks:
        assert data[("a-cal", t.name, 2)] == data[("icl-cal", t.name, 2)]
        assert data[("b-cal", t.name, 2)] == data[("zeroshot-cal", t.name, 2)]
    assert any(data[("icl", t.name, 2)] != data[("icl-cal", t.name, 2)] for t in tasks)  # calibration mattered
    assert got[0] == got[1]
    # The inner-steps sweep scores a -cal twin on its row's trajectory: at the rows' own 1 step it gives
    # the measured accuracy (a second path through adapt and score_episode).
    harness.config.inner_steps = [1]
    sweep = {r["method"]: r["accuracy"] for r in inner_steps_sweep(harness, tasks)}
    for row in ("c", "c-cal"):
        accs = [a for t in tasks for a in data[(row, t.name, 2)][0]]
        assert sweep[row] == pytest.approx(sum(accs) / len(accs), abs=1e-12)


def test_in_context_trained_rows(tiny, registry):
    """``in_context_trained``: an unadapted plain row scored in context equals icl (and icl-cal with
    calibration); an adapting row's ``+icl`` twin equals the adapted weights (inits.adapted_params)
    scored by option_scores on the demonstrations and the query, by hand; in-context and channel rows
    get no twin."""
    from metalm.data import collate
    from metalm.data.demos import demonstrations, in_context
    from metalm.eval.inits import adapted_params
    from metalm.losses import prepare_batch

    tok, algo, start, moved, rows = _four_rows(tiny[2], kind_b="mtl")
    tasks = [registry["toy_cls"], registry["toy_mc"]]
    got = []
    for shared in (True, False):
        config = EvalConfig(shots=[2], episodes=6, ways=3, queries=2, calibrate_trained=True, in_context_trained=True,
                            shared_work=shared, methods=["icl", "icl-cal", "meta", "mtl"])
        harness = Harness(algo.model, tok, start, config, rows, algo.selection.lowest_adapted_layer())
        assert list(harness.rows()) == ["icl", "icl-cal", "a", "a-cal", "b", "b-cal", "b+icl", "b+icl-cal", "c", "c-cal",
                                        "c+icl", "c+icl-cal", "d"]
        got.append(harness.measure(tasks))
    assert got[0] == got[1]
    data = got[0]
    assert harness.summarize(data, tasks)["budgets"]["c+icl"] == "sgd lr 0.1, 1 steps; scored in context (direct)"
    for t in tasks:
        assert data[("b+icl", t.name, 2)] == data[("icl", t.name, 2)]
        assert data[("b+icl-cal", t.name, 2)] == data[("icl-cal", t.name, 2)]
    for t in tasks:
        by_hand = []
        for ep in harness.episodes(t, 2):
            support = prepare_batch(collate(ep.support, tok, harness.collate))
            params = adapted_params(algo.model, moved, support)
            demos = demonstrations(ep.support)
            scores = option_scores(algo.model, params, [in_context(demos, q) for q in ep.query], tok, harness.collate)
            by_hand.append(sum(max(range(len(s)), key=s.__getitem__) == q.label
                               for s, q in zip(scores, ep.query, strict=True)) / len(ep.query))
        assert data[("c+icl", t.name, 2)][0] == by_hand
    assert any(data[("c+icl", t.name, 2)] != data[("c", t.name, 2)] for t in tasks)  # the prompt mattered


def test_the_chosen_budget_against_the_runner_up_by_hand():
    """Per-episode accuracies of three grid points: the best (mean 0.7) against the runner-up (0.6), paired
    by episode. Differences 0.1, 0.1, 0.1, 0.1: no spread, separated. Differences +0.3, -0.1, +0.3, -0.1:
    mean 0.1, sd 0.2309, half-width t(0.975, 3) * sd / 2 = 3.1824 * 0.11547 = 0.3675: not separated."""
    points = [("sgd", 0.3, 5), ("sgd", 3.0, 10), ("adam", 0.01, 5)]
    even = [[0.6, 0.7, 0.2], [0.6, 0.7, 0.2], [0.6, 0.7, 0.2], [0.6, 0.7, 0.2]]
    v = _versus_runner_up(even, points, [0.6, 0.7, 0.2], 1)
    assert v["runner_up"] == {"optimizer": "sgd", "lr": 0.3, "steps": 5} and v["separated"] and v["n"] == 4
    assert v["diff"] == pytest.approx(0.1) and v["ci95"] == 0.0
    noisy = [[0.4, 0.7, 0.2], [0.8, 0.7, 0.2], [0.4, 0.7, 0.2], [0.8, 0.7, 0.2]]
    v = _versus_runner_up(noisy, points, [0.6, 0.7, 0.2], 1)
    assert v["diff"] == pytest.approx(0.1) and v["ci95"] == pytest.approx(0.3675, abs=1e-4) and not v["separated"]
    choice = FinetuneChoice(None, [], v)
    assert "chosen on noise" in choice.warning() and "[-0.267, +0.467]" in choice.warning()
    one = _versus_runner_up([[0.5, 1.0, 0.0]], points, [0.5, 1.0, 0.0], 1)
    assert one["ci95"] is None and not one["separated"] and "one episode" in FinetuneChoice(None, [], one).warning()
    assert FinetuneChoice(None, [], None).warning() is None  # a given budget: nothing was chosen


def test_finetune_budget_is_chosen_on_validation_tasks(tiny, registry):
    _, _, path = tiny
    tok, algo, base = _learner(path)
    harness = Harness.from_learner(algo, tok, base, None, EvalConfig(
        methods=["finetune"], finetune_lrs=[1e-9, 1.0], finetune_adam_lrs=[0.01], finetune_steps=[1, 2], ways=2,
        queries=1, val_episodes=3))
    choice = choose_finetune(harness, [registry["toy_mc"]])
    chosen, grid = choice.init, choice.grid
    assert [(g["optimizer"], g["lr"], g["steps"]) for g in grid] == \
        [("sgd", 1e-9, 1), ("sgd", 1e-9, 2), ("sgd", 1.0, 1), ("sgd", 1.0, 2), ("adam", 0.01, 1), ("adam", 0.01, 2)]
    best = max(grid, key=lambda g: g["val_accuracy"])
    assert (chosen.inner.optimizer, chosen.inner.lr, chosen.inner.steps) == (best["optimizer"], best["lr"], best["steps"])
    # Against the runner-up on the same episodes: the mean of the differences is the difference of the means.
    second = max((g for g in grid if g is not best), key=lambda g: g["val_accuracy"])
    versus = choice.record()["versus"]
    assert versus["runner_up"] == {k: second[k] for k in ("optimizer", "lr", "steps")} and versus["n"] == 3
    assert versus["diff"] == pytest.approx(best["val_accuracy"] - second["val_accuracy"], abs=1e-12)
    assert versus["separated"] == (versus["diff"] - versus["ci95"] > 0)
    assert (choice.warning() is None) == versus["separated"]
    assert FinetuneChoice.from_record(harness.base, choice.record()).record() == choice.record()  # a journal's
    assert set(k[0] for k in harness.episode_cache) == {"toy_mc"}  # only validation episodes were drawn
    one = Harness.from_learner(algo, tok, base, None, EvalConfig(  # a budget given: nothing to choose or measure
        methods=["finetune"], finetune_optimizers=["adam"], finetune_adam_lrs=[0.01], finetune_steps=[2], ways=2))
    one.adapt = lambda *a: pytest.fail("a grid of one point was measured")
    given = choose_finetune(one, [registry["toy_mc"]])
    assert (given.init.inner.optimizer, given.init.inner.lr, given.init.inner.steps) == ("adam", 0.01, 2)
    assert given.grid == [{"optimizer": "adam", "lr": 0.01, "steps": 2, "val_accuracy": None}]
    with pytest.raises(ConfigError, match="meta needs a run trained with one of the algorithms .*maml, .*reptile"):
        Harness.from_learner(algo, tok, base, None, EvalConfig(methods=["meta"]))
    with pytest.raises(ConfigError, match="unknown method"):
        EvalConfig(methods=["mtl2"])
    for bad in ({"seeds": 0}, {"finetune_steps": []}, {"finetune_lrs": [], "finetune_optimizers": ["sgd"]},
                {"finetune_optimizers": []}, {"finetune_lrs": [float("nan")]}):
        with pytest.raises(ConfigError):
            EvalConfig(**bad)


def test_episode_seeds_do_not_depend_on_process_state(registry):
    a = EpisodeSampler([registry["toy_cls"]], SamplerConfig(ways=2, shots=1, queries=1), seed=5).sample()
    torch.manual_seed(99)
    b = EpisodeSampler([registry["toy_cls"]], SamplerConfig(ways=2, shots=1, queries=1), seed=5).sample()
    assert a == b


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_shared_prompt_scoring_equals_separate_rows(arch, tmp_path):
    path = save_tiny_model(tmp_path / arch, corpus(), arch)
    model = metalm.apply_adapter(metalm.load_model(path, dtype=torch.float64), metalm.AdapterConfig(rank=2))
    tok = AutoTokenizer.from_pretrained(path)
    fast = {n: p.detach() + 0.05 for n, p in model.named_parameters() if "lora_" in n}
    examples = [Example("Q: Is the apple number 1 yes?\nA:", " yes", [" yes", " no", " unsure maybe"], 0),
                Example("Which follows river?", " river-1", [" river-0", " river-1", " river-2 tiger"], 1),
                Example("Spell stone", " enots", [" enots", " stone"], 0),
                Example(" ".join(["apple river stone"] * 40), " no", [" yes", " no", " unsure"], 1)]
    # Demonstrations as a shared context: encoded once per batch; a long one loses its oldest tokens.
    demos = "W: tiger\nA: yes\n\nW: lamp\nA: no\n\n"
    examples += [dataclasses.replace(examples[0], context=demos), dataclasses.replace(examples[2], context=demos),
                 dataclasses.replace(examples[1], context=demos * 9), dataclasses.replace(examples[0], context=demos * 9)]
    config = CollateConfig(max_length=48)  # the long prompt and the long context are truncated from the left
    shared = option_scores(model, fast, examples, tok, config, batch_size=4)
    separate = option_scores(model, fast, examples, tok, config, shared_prompt=False)
    assert [len(s) for s in shared] == [3, 3, 2, 3, 3, 2, 3, 3]
    assert shared[4] != shared[0]  # the context counts
    assert torch.allclose(torch.tensor(sum(shared, [])), torch.tensor(sum(separate, [])), atol=1e-9)


def test_chunks_hold_every_row_once_and_bound_their_padding():
    """Rows of one option count go together, each exactly once, at most ``batch_size // n`` per chunk,
    and a chunk padded to its widest row (prompt + n x longest option) stays within PAD_WASTE of its
    real tokens plus PAD_SLACK per row (a row alone is always allowed): prompts of 10 to 1,200 tokens
    are not padded to the longest."""
    from metalm.eval.scoring import chunks_by_option_count
    from metalm.losses import PAD_SLACK, PAD_WASTE

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 1200, (40,), generator=g).tolist()
    rows = [([], [1] * p, [[2] * (1 + i % 3)] * (2 + i % 2)) for i, p in enumerate(lengths)]
    chunks = chunks_by_option_count(rows, batch_size=12)
    assert sorted(i for _, idx in chunks for i in idx) == list(range(40))
    assert len(chunks) > 40 // 6 + 2  # more chunks than the row budget alone would cut
    for n, idx in chunks:
        assert all(len(rows[i][2]) == n for i in idx) and len(idx) <= 12 // n
        real = sum(len(rows[i][1]) + sum(map(len, rows[i][2])) for i in idx)
        padded = len(idx) * max(len(rows[i][1]) + n * len(rows[i][2][0]) for i in idx)
        assert len(idx) == 1 or padded <= (1 + PAD_WASTE) * real + PAD_SLACK * len(idx)
    short = [([], [1] * 5, [[2], [3]]) for _ in range(8)]  # alike rows: one chunk of batch_size // n
    assert chunks_by_option_count(short, batch_size=8) == [(2, [0, 1, 2, 3]), (2, [4, 5, 6, 7])]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_shared_context_is_encoded_once_per_call_and_scores_like_full_rows(arch, tmp_path, monkeypatch):
    """The demonstrations' KV cache is computed once and copied to every chunk of the queries after them
    (chunks cut by the row budget too); each query's scores equal a full forward of context + prompt +
    option (float64: the paths differ by rounding only, ~1e-13 on log-probabilities of magnitude < 20)."""
    import metalm.eval.scoring as scoring

    path = save_tiny_model(tmp_path / arch, corpus(), arch)
    model = metalm.apply_adapter(metalm.load_model(path, dtype=torch.float64), metalm.AdapterConfig(rank=2))
    tok = AutoTokenizer.from_pretrained(path)
    fast = {n: p.detach() + 0.05 for n, p in model.named_parameters() if "lora_" in n}
    demos, other = "W: tiger\nA: yes\n\nW: lamp\nA: no\n\n", "W: river\nA: no\n\n"
    queries = [Example(f"W: {w}\nA:", " yes", [" yes", " no"], 0) for w in ("apple", "stone", "lamp", "cup", "sun")]
    queries.append(Example("W: apple\nA:", " no", [" yes", " no", " unsure"], 1))  # another option count
    examples = [dataclasses.replace(q, context=c) for c in (demos, other) for q in queries]
    encoded = []
    real = scoring._encode
    monkeypatch.setattr(scoring, "_encode", lambda backbone, c_ids: encoded.append(c_ids.shape[1]) or
                        real(backbone, c_ids))
    monkeypatch.setattr(scoring, "CONTEXT_TOKENS", 40)  # a context of ~20 tokens: 2 rows a chunk
    config = CollateConfig(max_length=64)
    shared = option_scores(model, fast, examples, tok, config, batch_size=4)
    assert len(encoded) == 2  # one encoding per distinct context, for 12 queries in 6+ chunks
    separate = option_scores(model, fast, examples, tok, config, shared_prompt=False)
    assert [len(s) for s in shared] == [2, 2, 2, 2, 2, 3] * 2
    assert shared[0] != shared[6]  # the context counts
    assert torch.allclose(torch.tensor(sum(shared, [])), torch.tensor(sum(separate, [])), atol=1e-9)
    with torch.enable_grad():  # training (rank_loss) encodes the context per chunk, so gradients flow through it
        encoded.clear()
        loss = metalm.eval.scoring.rank_loss(model, fast, examples[:5], tok, config)
    assert encoded and torch.isfinite(loss)


def test_in_context_rows_share_each_episodes_demonstrations(tiny, registry, monkeypatch):
    """icl, icl-cal and icl-channel on an episode encode its direct and its channel demonstrations once
    each (icl's rows are icl-cal's first rows), with the reference path's accuracies."""
    import metalm.eval.scoring as scoring

    _, _, path = tiny
    tok, algo, base = _learner(path)
    encoded = []
    real = scoring._encode
    monkeypatch.setattr(scoring, "_encode", lambda backbone, c_ids: encoded.append(1) or real(backbone, c_ids))
    task = registry["toy_cls"]
    results = []
    for shared in (True, False):
        config = EvalConfig(shots=[2], episodes=3, ways=2, queries=3, methods=["icl", "icl-cal", "icl-channel"],
                            shared_work=shared, batch_size=4)
        harness = Harness.from_learner(algo, tok, base, base, config)
        encoded.clear()
        results.append(harness.block(list(harness.rows().values()), harness.episodes(task, 2, 0)).accuracy)
        if shared:
            assert len(encoded) == 2 * 3  # per episode: the direct and the channel demonstrations
        else:
            assert len(encoded) == 3 * 3  # the reference path: once per method and episode
    assert results[0] == results[1]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prepared_queries_score_like_full_forwards(arch, tmp_path):
    """Layers below the adapter run once; any fast weights then give option_scores' values."""
    from metalm.eval.prepared import prepare_queries, score_prepared

    path = save_tiny_model(tmp_path / arch, corpus(), arch)
    model = metalm.apply_adapter(metalm.load_model(path, dtype=torch.float64),
                                 metalm.AdapterConfig(rank=2, layers="top:1"))
    tok = AutoTokenizer.from_pretrained(path)
    sel = metalm.select_parameters(model, metalm.AdapterConfig(rank=2, layers="top:1"))
    layer = sel.lowest_adapted_layer()
    assert 0 < layer < sel.n_layers
    init = {n: p.detach() for n, p in sel.fast_params(model).items()}
    examples = [Example("Q: Is the apple number 1 yes?\nA:", " yes", [" yes", " no", " unsure maybe"], 0),
                Example("Which follows river?", " river-1", [" river-0", " river-1", " river-2 tiger"], 1),
                Example("Spell stone", " enots", [" enots", " stone"], 0),
                Example(" ".join(["apple river stone"] * 40), " no", [" yes", " no", " unsure"], 1)]
    config = CollateConfig(max_length=48)  # the last prompt is truncated from the left
    scores, prepared = prepare_queries(model, init, examples, tok, config, layer, batch_size=4)
    assert prepared is not None
    assert torch.allclose(torch.tensor(sum(scores, [])), torch.tensor(sum(option_scores(
        model, init, examples, tok, config, shared_prompt=False), [])), atol=1e-9)
    for shift in (0.05, -0.3):
        fast = {n: v + shift for n, v in init.items()}
        reuse = score_prepared(model, fast, prepared)
        full = option_scores(model, fast, examples, tok, config, shared_prompt=False)
        assert [len(s) for s in reuse] == [3, 3, 2, 3]
        assert torch.allclose(torch.tensor(sum(reuse, [])), torch.tensor(sum(full, [])), atol=1e-9)
        assert not torch.allclose(torch.tensor(sum(reuse, [])), torch.tensor(sum(scores, [])), atol=1e-3)


def _logp(model, demos: str, prompt: str, continuation: str, tok) -> list[float]:
    """Log-probabilities of ``continuation``'s tokens after ``demos`` and ``prompt``, by a plain HF
    forward; demonstrations are tokenized as a segment of their own (with the start token)."""
    prompt = tok(demos)["input_ids"] + tok(prompt, add_special_tokens=False)["input_ids"] if demos else \
        tok(prompt)["input_ids"]
    answer = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt + answer])).logits[0], -1)
    return [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(answer)]


def _short_episode():
    """A 2-way episode short enough for the tiny models' 64 positions, demonstrations included."""
    from metalm.data.episode import TextEpisode

    def ex(word, label):
        return Example(f"W: {word}\nA:", [" yes", " no"][label], [" yes", " no"], label,
                       content_free=("W: N/A\nA:", "W: \nA:"))
    return TextEpisode("short", "classification", [ex("apple", 0), ex("river", 1)], [ex("stone", 1)], ["yes", "no"])


def test_contextual_calibration_by_hand(tiny, registry):
    """zeroshot-cal and icl-cal against Zhao et al.'s formula computed from plain HF forwards."""
    model, tok, path = tiny
    tok2, algo, base = _learner(path)
    config = EvalConfig(shots=[1], episodes=1, ways=2, queries=1, methods=["zeroshot-cal", "icl-cal"],
                        content_free=["N/A", ""], max_length=128)
    harness = Harness.from_learner(algo, tok2, base, None, config)
    (sampled,) = harness.episodes(registry["toy_cls"], 1)
    q = sampled.query[0]
    assert len(q.content_free) == 2 and "N/A" in q.content_free[0] and "N/A" not in q.prompt
    assert q.content_free[1] == q.content_free[0].replace("N/A", "") != q.prompt
    episode = _short_episode()
    q = episode.query[0]
    demos = "\n\n".join(ex.prompt + ex.answer for ex in episode.support)
    assert len(tok(demos + "\n\n" + q.prompt + q.options[0])["input_ids"]) < 64  # nothing truncated
    for method, prefix in (("zeroshot-cal", ""), ("icl-cal", demos + "\n\n")):
        ours = harness._unadapted(method, [episode])[0][0]
        assert torch.allclose(torch.tensor(ours, dtype=torch.float64), _calibrated_by_hand(model, tok, prefix, q),
                              atol=1e-6)


def _calibrated_by_hand(model, tok, prefix, q):
    """Zhao et al.'s calibrated log-scores of query ``q`` after ``prefix``, from plain HF forwards: option
    probabilities (mean log-likelihood per token, softmaxed) over their mean on the content-free prompts."""
    def probs(prompt):
        s = torch.tensor([sum(v) / len(v) for v in (_logp(model, prefix, prompt, o, tok) for o in q.options)],
                         dtype=torch.float64)
        return torch.softmax(s, 0)

    cf = sum(probs(p) for p in q.content_free) / len(q.content_free)
    return (probs(q.prompt) / cf).log()


def test_calibration_of_a_task_whose_input_field_is_text(tiny, tmp_path):
    """A task whose input field is named ``text`` (as `metalm tasks new --type classification` writes it):
    its content-free prompts replace that field (they used to keep it, so calibration divided the scores
    by themselves), the calibrated row differs from the plain one and matches Zhao et al.'s formula
    computed by hand from plain HF forwards."""
    from metalm.data import TaskRegistry, load_task_file
    from metalm.data.registry import Task

    model, tok, path = tiny
    words = ["apple", "pear", "plum", "fig", "river", "lake", "sea", "pond"]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": w, "label": "fruit" if i < 4 else "water"}) + "\n"
                                              for i, w in enumerate(words)))
    (tmp_path / "t.yaml").write_text(json.dumps({"name": "textfield", "type": "classification",
                                                 "source": {"kind": "jsonl", "path": "t.jsonl"},
                                                 "template": "W: {{ text }}\nA:", "labels": ["fruit", "water"]}))
    registry = TaskRegistry([Task(load_task_file(tmp_path / "t.yaml"), str(tmp_path / "t.yaml"))])
    tok2, algo, base = _learner(path)
    config = EvalConfig(shots=[1], episodes=1, ways=2, queries=1, methods=["zeroshot", "zeroshot-cal"],
                        content_free=["N/A", ""], max_length=64)
    harness = Harness.from_learner(algo, tok2, base, None, config)
    (episode,) = harness.episodes(registry["textfield"], 1)
    q = episode.query[0]
    assert q.content_free == ("W: N/A\nA:", "W: \nA:") and q.prompt not in q.content_free
    expected = _calibrated_by_hand(model, tok, "", q)
    plain = harness._unadapted("zeroshot", [episode])[0][0]
    calibrated = harness._unadapted("zeroshot-cal", [episode])[0][0]
    assert torch.allclose(torch.tensor(calibrated, dtype=torch.float64), expected, atol=1e-6)
    assert not torch.allclose(torch.tensor(calibrated).log_softmax(0), torch.tensor(plain).log_softmax(0), atol=1e-3)


def test_channel_scores_are_input_likelihoods_given_the_label(tiny, registry):
    """Channel scoring (Min et al. 2022) against log P(input | demos, label) from plain HF forwards."""
    model, tok, path = tiny
    tok2, algo, base = _learner(path)
    harness = Harness.from_learner(algo, tok2, base, None, EvalConfig(
        shots=[1], episodes=1, ways=2, queries=1, methods=["zeroshot-channel", "icl-channel"], max_length=128))
    episode = _short_episode()
    q = episode.query[0]
    demos = "\n\n".join(f"{ex.answer.strip()}\n{ex.prompt}" for ex in episode.support)
    assert len(tok(demos + "\n\n" + q.options[0] + "\n" + q.prompt)["input_ids"]) < 64  # nothing truncated
    for method, prefix in (("zeroshot-channel", ""), ("icl-channel", demos + "\n\n")):
        expected = [sum(_logp(model, prefix, f"{o.strip()}\n", q.prompt, tok)) for o in q.options]
        ours = harness._unadapted(method, [episode])[0][0]
        assert ours == pytest.approx(expected, abs=1e-6)


def test_paired_interval_holds_a_known_difference_and_is_narrower():
    """Two methods whose per-episode accuracies differ by exactly 0.25: the paired interval is that
    constant with zero width; the unpaired intervals are wide because the episodes vary a lot."""
    from metalm.eval import paired, summarize

    rng = torch.Generator().manual_seed(0)
    tasks, n = ["a", "b", "c"], 12
    data, d = {}, 0.25
    for t in tasks:
        base = (torch.randint(0, 5, (2, n), generator=rng) / 8).tolist()  # multiples of 1/8: exact sums
        data[("zeroshot", t, 4)] = base
        data[("meta", t, 4)] = [[a + d for a in row] for row in base]
    report = summarize(data, tasks, [4], chance={t: 0.5 for t in tasks}, majority={t: 0.5 for t in tasks},
                       seeds=[1, 2], baselines=["zeroshot"])
    (macro,) = [p for p in report["paired"] if p["task"] == "macro"]
    assert macro["reference"] == "zeroshot" and macro["n"] == 2 * n
    assert macro["diff"] == pytest.approx(d) and macro["ci95"] == 0.0 and macro["p"] == 0.0
    unpaired = {r["method"]: r["ci95"] for r in report["macro"]}
    assert min(unpaired.values()) > 0.01 > macro["ci95"]  # the episodes vary; their differences do not
    # With noise on the difference, the paired interval still contains it and is narrower.
    noisy = [x + y for x, y in zip([0.25] * 24, (torch.randn(24, generator=rng) * 0.01).tolist(), strict=True)]
    values = [v for row in data[("zeroshot", "a", 4)] for v in row]
    got = paired([v + e for v, e in zip(values, noisy, strict=True)], values)
    assert got["diff"] - got["ci95"] < 0.25 < got["diff"] + got["ci95"] < 0.25 + 0.05
    assert got["ci95"] < mean_ci95(values)[1] and 0 < got["mde80"] < 0.05 and got["p"] < 1e-6
    assert report["per_episode"]["meta|a|4"] == data[("meta", "a", 4)]  # every accuracy kept
    seeds = {(r["method"], r["seed"]) for r in report["seeds"]["per_seed"]}
    assert seeds == {(m, s) for m in ("zeroshot", "meta") for s in (1, 2)}
    with pytest.raises(ConfigError, match="not evaluated"):
        summarize(data, tasks, [4], chance={}, majority={}, seeds=[1, 2], baselines=[], reference="icl")
    # The winner is the best macro mean, compared with the runner-up on the same units.
    (win,) = report["winner"]
    assert (win["method"], win["runner_up"], win["separated"]) == ("meta", "zeroshot", True)
    assert win["diff"] == pytest.approx(d) and win["ci95"] == 0.0
    from metalm.eval import format_winner
    assert format_winner(report).startswith("4-shot winner: meta (") and "vs zeroshot: +0.250" in format_winner(report)
    data[("icl", "a", 4)] = [[a + 0.5 * e for a, e in zip(row, [1, -1] * (n // 2), strict=True)]
                            for row in data[("meta", "a", 4)]]  # the winner's values +-0.5 (alternating)
    for t in tasks[1:]:
        data[("icl", t, 4)] = data[("meta", t, 4)]
    data[("icl", "a", 4)][0][0] += 0.125  # icl ahead by 0.125 on one unit of 24: the best, not separated
    tied = summarize(data, tasks, [4], chance={t: 0.5 for t in tasks}, majority={t: 0.5 for t in tasks},
                     seeds=[1, 2], baselines=["zeroshot"])
    (win,) = tied["winner"]
    assert (win["method"], win["runner_up"], win["separated"]) == ("icl", "meta", False)
    assert win["diff"] == pytest.approx(0.125 / 3 / 24) and "not separated" in format_winner(tied)


def test_grouped_means_match_a_hand_calculation():
    """Per-type means from ``per_episode``: each unit is the mean over the group's tasks of one episode
    (hand-computed here from the raw lists); one group holding every task gives the macro row back."""
    from metalm.eval.summary import format_grouped, grouped, summarize

    data = {("icl", "a", 1): [[1.0, 0.5], [0.0, 1.0]], ("icl", "b", 1): [[0.5, 0.5], [1.0, 0.0]],
            ("icl", "c", 1): [[0.0, 0.25], [0.75, 1.0]]}
    tasks = ["a", "b", "c"]
    report = {**summarize(data, tasks, [1], chance={t: 0.5 for t in tasks}, majority={t: 0.5 for t in tasks},
                          seeds=[1, 2], baselines=["icl"]), "tasks": tasks}
    rows = {r["group"]: r for r in grouped(report, {"a": "x", "b": "x", "c": "y"})}
    units_x = [(1.0 + 0.5) / 2, (0.5 + 0.5) / 2, (0.0 + 1.0) / 2, (1.0 + 0.0) / 2]
    assert rows["x"]["accuracy"] == pytest.approx(sum(units_x) / 4) and rows["x"]["tasks"] == 2
    assert rows["x"]["ci95"] == pytest.approx(mean_ci95(units_x)[1])
    assert rows["y"]["accuracy"] == pytest.approx(0.5) and rows["y"]["tasks"] == 1
    (whole,) = grouped(report, dict.fromkeys(tasks, "all"))
    (macro,) = report["macro"]
    assert (whole["accuracy"], whole["ci95"]) == pytest.approx((macro["accuracy"], macro["ci95"]))
    assert "| x (2) | icl | 0.562 ± " in format_grouped(grouped(report, {"a": "x", "b": "x", "c": "y"}))
    with pytest.raises(ConfigError, match="no group for 1 task"):
        grouped(report, {"a": "x", "b": "x"})


def test_macro_units_read_back_from_a_report_give_its_paired_difference():
    """macro_units (what choose.py's pilot, trend.py and power.py pair): hand-computed units, and the
    report's own paired difference recomputed from them; a missing row is named with the rows there are."""
    from metalm.eval.stats import paired
    from metalm.eval.summary import macro_units, summarize

    data = {("icl", "a", 1): [[1.0, 0.5]], ("icl", "b", 1): [[0.5, 0.0]],
            ("meta", "a", 1): [[1.0, 1.0]], ("meta", "b", 1): [[1.0, 0.5]]}
    tasks = ["a", "b"]
    report = {**summarize(data, tasks, [1], chance={t: 0.5 for t in tasks}, majority={t: 0.5 for t in tasks},
                          seeds=[1], baselines=["icl"]), "tasks": tasks}
    assert macro_units(report, "icl", 1) == [0.75, 0.25] and macro_units(report, "meta", 1) == [1.0, 0.75]
    (pair,) = [p for p in report["paired"] if p["task"] == "macro" and p["method"] == "meta"]
    test = paired(macro_units(report, "meta", 1), macro_units(report, "icl", 1))
    assert test["diff"] == pytest.approx(pair["diff"]) == pytest.approx(0.375)
    with pytest.raises(MetalmError, match=r"no 'hyper' row at 1 shots on a \(its rows there: icl, meta\)"):
        macro_units(report, "hyper", 1)


def test_a_killed_evaluation_resumes_from_its_journal(tiny, registry, tmp_path):
    from metalm.eval.journal import Journal

    _, _, path = tiny
    tok, algo, base = _learner(path)
    config = EvalConfig(shots=[1], episodes=2, seeds=2, ways=2, queries=1, methods=["zeroshot", "icl", "meta"])
    tasks = [registry["toy_cls"], registry["toy_mc"]]
    trained = {k: v + 0.05 * torch.randn_like(v) for k, v in base.items()}
    first = Harness.from_learner(algo, tok, base, trained, config)
    whole = first.measure(tasks)
    log = tmp_path / "eval.json.partial.jsonl"
    journal = Journal(log, {"eval": "x"}, resume=False)
    Harness.from_learner(algo, tok, base, trained, config).measure(tasks[:1], journal=journal)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write('{"block": "toy_mc/1/0", "rows": {"zeroshot": [0.')  # killed mid-line
    text = log.read_text()
    read_only = Journal.read(log)  # as benchmarks/fewshot/reproduce.py reads a running evaluation's journal
    assert log.read_text() == text and set(read_only.blocks) == {"toy_cls/1/0", "toy_cls/1/1"}
    resumed = Journal(log, {"eval": "x"}, resume=True)
    assert set(resumed.blocks) == {"toy_cls/1/0", "toy_cls/1/1"}
    assert (read_only.blocks, read_only.costs, read_only.seconds, read_only.fingerprint) == \
        (resumed.blocks, resumed.costs, resumed.seconds, {"eval": "x"})
    recorded = [json.loads(line)["seconds"] for line in log.read_text().splitlines()[1:3]]
    assert all(s > 0 for s in recorded) and resumed.seconds == pytest.approx(sum(recorded))  # the earlier session's time
    calls = []
    harness = Harness.from_learner(algo, tok, base, trained, config)
    harness.block = lambda rows, episodes, f=harness.block: calls.append(episodes[0].task) or f(rows, episodes)
    again = harness.measure(tasks, journal=resumed)
    assert again == whole and list(again) == list(whole)  # the rows in the same order: the report's order
    assert calls == ["toy_mc", "toy_mc"]  # only the blocks the journal lacked
    # The journaled blocks' adaptation costs are read back: every adaptation counted, tokens as measured.
    assert [t for _, t in harness.cost.records["meta"]] == [t for _, t in first.cost.records["meta"]]
    assert len(harness.cost.records["meta"]) == 2 * 2 * 2
    with pytest.raises(ConfigError, match="another evaluation"):
        Journal(log, {"eval": "y"}, resume=True)


def test_a_block_journaled_in_pieces_resumes_within_the_block(tiny, registry, tmp_path):
    """With ``every`` = 1, each episode of a block is journaled as it is measured: a kill in the middle of
    a block loses one episode, the resumed evaluation measures only the episodes the journal lacks, and
    the figures, costs and measuring seconds are those of an evaluation measured whole."""
    from metalm.eval.journal import Journal

    _, _, path = tiny
    tok, algo, base = _learner(path)
    config = EvalConfig(shots=[1], episodes=3, seeds=1, ways=2, queries=1, methods=["zeroshot", "icl", "meta"])
    tasks = [registry["toy_cls"]]
    trained = {k: v + 0.05 * torch.randn_like(v) for k, v in base.items()}
    whole_harness = Harness.from_learner(algo, tok, base, trained, config)
    whole = whole_harness.measure(tasks)
    log = tmp_path / "eval.json.partial.jsonl"
    journal = Journal(log, {"eval": "x"}, resume=False, every=1)
    harness = Harness.from_learner(algo, tok, base, trained, config)
    real = harness.block

    def killed_at_the_third(rows, episodes):
        if len(journal.pieces.get("toy_cls/1/0", {})) == 2:
            raise KeyboardInterrupt
        return real(rows, episodes)

    harness.block = killed_at_the_third
    with pytest.raises(KeyboardInterrupt):
        harness.measure(tasks, journal=journal)
    resumed = Journal(log, {"eval": "x"}, resume=True, every=1)
    assert not resumed.blocks and sorted(resumed.pieces["toy_cls/1/0"]) == [0, 1]
    calls = []
    again_harness = Harness.from_learner(algo, tok, base, trained, config)
    again_harness.block = lambda rows, eps, f=again_harness.block: calls.append(len(eps)) or f(rows, eps)
    again = again_harness.measure(tasks, journal=resumed)
    assert calls == [1]  # the third episode only
    assert again == whole and list(again) == list(whole)
    assert [t for _, t in again_harness.cost.records["meta"]] == [t for _, t in whole_harness.cost.records["meta"]]
    final = Journal(log, {"eval": "x"}, resume=True)
    assert final.blocks["toy_cls/1/0"] == {r: v[0] for (r, _, _), v in whole.items()}
    pieces = [json.loads(line)["seconds"] for line in log.read_text().splitlines() if '"piece"' in line]
    assert len(pieces) == 3 and final.seconds == pytest.approx(sum(pieces))  # the block line adds no time
    with pytest.raises(ConfigError, match="journal-every"):
        Journal(tmp_path / "other.jsonl", {"eval": "x"}, resume=False, every=0)


def test_two_harnesses_share_a_journal(tiny, registry, tmp_path):
    """A run with another adapter is measured by a harness of its own on the same episodes; its rows
    join the first harness's in the same journal blocks, and a resumed evaluation measures neither again."""
    from metalm.eval.fewshot import Trained
    from metalm.eval.inits import init_from_values
    from metalm.eval.journal import Journal

    _, _, path = tiny
    tok, algo, base = _learner(path)
    start = init_from_values(algo, base, trained=False)
    config = EvalConfig(shots=[1], episodes=2, ways=2, queries=1, methods=["zeroshot", "meta"])
    tasks = [registry["toy_cls"]]

    def harness(label):
        return Harness(algo.model, tok, start, config, [Trained(label, "meta", start)],
                       algo.selection.lowest_adapted_layer())

    log = tmp_path / "eval.json.partial.jsonl"
    journal = Journal(log, {"eval": "x"}, resume=False)
    first = harness("a").measure(tasks, journal=journal)
    other = harness("b")
    other.config = dataclasses.replace(config, methods=["meta"])  # as measure_separately narrows it
    second = other.measure(tasks, journal=journal)
    resumed = Journal(log, {"eval": "x"}, resume=True)
    assert set(resumed.blocks["toy_cls/1/0"]) == {"zeroshot", "a", "b"}
    for h, expected in ((harness("a"), first), (other, second)):
        h.block = lambda *item: pytest.fail("measured again")
        assert h.measure(tasks, journal=resumed) == expected


@pytest.mark.parametrize("shared", [True, False])
def test_adaptation_cost_counts_each_inner_steps_forward_over_the_support_set(tiny, registry, shared):
    """Forward tokens per new task = inner steps x the support batch's [B, T] (each step reads the
    whole support set once through the top layer); an unadapted row costs none; a twin scored on
    its row's adapted weights is charged the same adaptation."""
    from metalm.data import collate

    tok, algo, start, moved, rows = _four_rows(tiny[2])
    moved3 = dataclasses.replace(moved, inner=dataclasses.replace(moved.inner, steps=3))
    rows = [rows[0], dataclasses.replace(rows[2], init=moved3)]
    task = registry["toy_cls"]
    config = EvalConfig(shots=[2], episodes=3, ways=2, queries=1, calibrate_trained=True, shared_work=shared,
                        methods=["meta"])
    harness = Harness(algo.model, tok, start, config, rows, algo.selection.lowest_adapted_layer())
    harness.measure([task])
    support = [collate(ep.support, tok, harness.collate)["input_ids"].numel() for ep in harness.episodes(task, 2)]
    records = harness.cost.records
    assert [t for _, t in records["a"]] == [0, 0, 0]
    assert [t for _, t in records["c"]] == [3 * n for n in support]
    if shared:  # the -cal twin scores c's adapted weights: the same adaptation, charged again
        assert records["c-cal"] == records["c"]
    else:  # the reference path adapts the twin again on its own: the same tokens
        assert [t for _, t in records["c-cal"]] == [3 * n for n in support]
    summary = harness.summarize(harness.measure([task]), [task])["adaptation_cost"]
    assert summary["c"]["forward_tokens"] == pytest.approx(3 * sum(support) / 3)
    assert summary["c"]["adaptations"] == 6 and all(s > 0 for s, _ in records["c"])


@pytest.mark.parametrize("shared", [True, False])
def test_a_new_tasks_cost_per_row_alone(tiny, registry, tmp_path, shared):
    """``episode_costs``: each row alone on an episode. An adapting row scored like zero-shot costs
    zero-shot's tokens plus inner steps x the support batch's [B, T] (the adaptation test's count);
    in-context rows read more than zero-shot; each row's accuracy alone is the block's; a journal
    gives the costs back without measuring again, and a journal of another ``n`` is measured again."""
    from metalm.data import collate
    from metalm.eval.episode_cost import episode_costs
    from metalm.eval.fewshot import Trained
    from metalm.eval.journal import Journal

    tok, algo, start, moved, _ = _four_rows(tiny[2])
    moved3 = dataclasses.replace(moved, inner=dataclasses.replace(moved.inner, steps=3))
    task = registry["toy_cls"]
    config = EvalConfig(shots=[2], episodes=3, ways=2, queries=2, shared_work=shared,
                        methods=["zeroshot", "icl", "icl-channel", "meta"])
    harness = Harness(algo.model, tok, start, config, [Trained("c", "meta", moved3)],
                      algo.selection.lowest_adapted_layer())
    journal = Journal(tmp_path / "j.jsonl", {"eval": "x"}, resume=False)
    costs = episode_costs(harness, [task], 2, journal=journal)
    assert set(costs) == {"zeroshot", "icl", "icl-channel", "c"} and all(set(c) == {"2"} for c in costs.values())
    got = {row: c["2"] for row, c in costs.items()}
    support = [collate(ep.support, tok, harness.collate)["input_ids"].numel() for ep in harness.episodes(task, 2)[:2]]
    assert got["c"]["forward_tokens"] - got["zeroshot"]["forward_tokens"] == pytest.approx(3 * sum(support) / 2)
    assert got["icl"]["forward_tokens"] > got["zeroshot"]["forward_tokens"]
    assert got["icl-channel"]["forward_tokens"] > got["zeroshot"]["forward_tokens"]
    assert all(c["episodes"] == 2 and c["seconds"] > 0 for c in got.values())
    measured = harness.measure([task])
    rows = harness.rows()
    for name in got:
        alone = [harness.alone(rows[name], ep) for ep in harness.episodes(task, 2)]
        assert alone == measured[name, "toy_cls", 2][0]

    resumed = Journal(tmp_path / "j.jsonl", {"eval": "x"}, resume=True)
    assert resumed.cost_seconds > 0 and resumed.seconds == 0  # kept apart from the accuracies' time
    def measured_again(*_):
        raise RuntimeError("measured again")

    harness.alone = measured_again
    again = episode_costs(harness, [task], 2, journal=resumed)
    assert again == costs
    with pytest.raises(RuntimeError, match="measured again"):  # one episode asked: not the journal's two
        episode_costs(harness, [task], 1, journal=resumed)


def test_pareto_front_by_hand():
    """No other point both cheaper-or-equal and at-least-as-accurate (better in one): the front, by cost."""
    from metalm.eval.cost import cost_table, pareto_front

    points = {"zeroshot": (1.0, 0.40), "icl": (10.0, 0.60), "icl-cal": (12.0, 0.55), "ft": (5.0, 0.60),
              "hyper": (2.0, 0.50), "tie": (2.0, 0.50), "slow": (20.0, 0.70)}
    # icl: ft is cheaper at the same accuracy; icl-cal: ft is cheaper and better; hyper and tie equal.
    assert pareto_front(points) == ["zeroshot", "hyper", "tie", "ft", "slow"]
    assert pareto_front({}) == [] and pareto_front({"a": (1.0, 0.1)}) == ["a"]
    report = {"macro": [{"method": m, "shots": 4, "accuracy": a, "ci95": 0.1} for m, (_, a) in points.items()],
              "episode_cost": {m: {"4": {"seconds": c, "forward_tokens": 10 * c, "episodes": 1}}
                               for m, (c, _) in points.items() if m != "slow"}}  # a row without a cost: left out
    table = cost_table(report)
    assert [x["row"] for x in table] == ["zeroshot", "hyper", "tie", "ft", "icl", "icl-cal"]
    assert [x["row"] for x in table if x["front"]] == ["zeroshot", "hyper", "tie", "ft"]  # icl: ft equals it cheaper


def test_bf16_autocast_covers_every_forward_of_the_evaluation(tiny, registry):
    """``autocast: bf16``: every forward pass of fine-tuning's choice, the block (unadapted and adapted
    rows, classification and generation), a row alone and the inner-steps sweep runs under bf16
    autocast, and none does with ``float32``; the fast weights stay float32. The accuracies are the
    float32 harness's computed inside an explicit bf16 autocast (a second path to the same numbers)."""
    tok, algo, base = _learner(tiny[2], dtype="float32")  # autocast leaves float64 alone
    trained = {k: v + 0.05 * torch.randn_like(v) for k, v in base.items()}
    seen: list[bool] = []
    hooks = [m.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
             for m in algo.model.modules() if any(True for _ in m.parameters(recurse=False))]
    tasks = [registry["toy_cls"], registry["toy_gen"]]
    results = {}
    for precision in ("float32", "bf16"):
        evalc = EvalConfig(shots=[2], episodes=2, ways=2, queries=1, methods=["zeroshot", "icl-cal", "finetune", "meta"],
                           finetune_lrs=[0.3], finetune_adam_lrs=[0.01], finetune_steps=[1, 2], inner_steps=[1, 2],
                           autocast=precision)
        harness = Harness.from_learner(algo, tok, base, trained, evalc)
        seen.clear()
        choice = choose_finetune(harness, [registry["toy_cls"]])
        report = harness.run(tasks, finetune=choice)
        row = harness.rows(choice)["meta"]
        alone = harness.alone(row, harness.episodes(tasks[0], 2)[0])
        assert len(seen) > 50 and set(seen) == {precision == "bf16"}
        adapted = harness._adapted(row.init, harness.support(harness.episodes(tasks[0], 2)[0], 1))
        assert {v.dtype for v in adapted.values()} == {torch.float32}
        results[precision] = (choice.grid, report["per_episode"], report["inner_steps_sweep"], alone)
    for h in hooks:
        h.remove()
    harness = Harness.from_learner(algo, tok, base, trained, dataclasses.replace(evalc, autocast="float32"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        choice = choose_finetune(harness, [registry["toy_cls"]])
        report = harness.run(tasks, finetune=choice)
        alone = harness.alone(harness.rows(choice)["meta"], harness.episodes(tasks[0], 2)[0])
    assert (choice.grid, report["per_episode"], report["inner_steps_sweep"], alone) == results["bf16"]
    with pytest.raises(ConfigError, match="autocast"):
        EvalConfig(autocast="fp16")


def test_the_precision_enters_a_journals_fingerprint_only_when_it_is_bf16(registry):
    """A bf16 evaluation never resumes a float32 journal (its figures differ by bf16 rounding), and a
    float32 one still resumes the journals written before the precision was a setting: the committed
    baseline journal's fingerprint is the bench protocol's values."""
    import json
    from pathlib import Path

    from metalm.eval.protocol import load_protocol
    from metalm.eval.recipe import journaled_values

    plain = journaled_values(EvalConfig())
    assert "autocast" not in plain and journaled_values(EvalConfig(autocast="bf16")) == {**plain, "autocast": "bf16"}
    journal = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "bench_baselines.json.partial.jsonl"
    if journal.is_file():  # until the table is done (then its report holds the values)
        first = json.loads(journal.read_text(encoding="utf-8").splitlines()[0])["fingerprint"]["eval"]
        bench = EvalConfig(**load_protocol("bench", registry).eval)
        assert journaled_values(bench) == first


def test_the_default_max_length_cuts_no_row_and_a_short_one_is_counted_by_hand(registry, tmp_path):
    """max_length unset: the model's window, so 16 shots of 3 ways (48 demonstrations) cut no row; at 48
    tokens the report counts the cut rows, as a hand count of the tokens says (an episode's queries share
    its demonstrations, cut together when the longest prompt + option does not fit)."""
    from metalm.data import TaskRegistry, load_task_file
    from metalm.data.registry import Task
    from metalm.eval.truncation import truncation, warning

    path = save_tiny_model(tmp_path / "m", corpus(), "llama", max_position_embeddings=2048)
    tok, algo, base = _learner(path)
    # 20 examples a label: 16 shots and a query each
    words = {"yes": "apple", "no": "river", "unsure": "stone"}
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": f"{w} number {i}", "label": lab}) + "\n"
                                              for lab, w in words.items() for i in range(20)))
    (tmp_path / "t.yaml").write_text(json.dumps({"name": "sixteen", "type": "classification",
                                                 "source": {"kind": "jsonl", "path": "t.jsonl"},
                                                 "template": "Q: {{ text }}\nA:", "labels": list(words)}))
    sixteen = TaskRegistry([Task(load_task_file(tmp_path / "t.yaml"), str(tmp_path / "t.yaml"))])["sixteen"]
    config = EvalConfig(shots=[16], episodes=2, ways=3, queries=1, methods=["zeroshot", "icl", "icl-cal"])
    harness = Harness.from_learner(algo, tok, base, None, config)
    assert harness.max_length == 2048
    counts = truncation(harness, [sixteen])
    per_row = 2 * 3 * (1 + len(config.content_free))  # episodes x queries x (query + content-free twins)
    assert counts["icl"]["sixteen"] == {"cut": 0, "rows": 2 * 3} and counts["icl-cal"]["sixteen"]["rows"] == per_row
    assert warning(counts, 2048) is None
    ep = harness.episodes(sixteen, 16)[0]  # prompts the old fixed default (256) would have cut
    assert len(ep.support) == 48 and len(tok("\n\n".join(e.prompt + e.answer for e in ep.support))["input_ids"]) > 256

    config = dataclasses.replace(config, shots=[8])
    task = registry["toy_cls"]

    short = Harness.from_learner(algo, tok, base, None, dataclasses.replace(config, max_length=48))
    counts = truncation(short, [task])
    by_hand = {"zeroshot": 0, "icl": 0}
    for ep in short.episodes(task, 8):
        longest = max(len(tok(o, add_special_tokens=False)["input_ids"]) for o in ep.query[0].options)
        prompts = [len(tok(q.prompt, add_special_tokens=False)["input_ids"]) for q in ep.query]
        by_hand["zeroshot"] += sum(p + 1 + longest > 48 for p in prompts)  # + BOS
        demos = "\n\n".join(ex.prompt + ex.answer for ex in ep.support) + "\n\n"
        by_hand["icl"] += len(prompts) * (len(tok(demos)["input_ids"]) + max(prompts) + longest > 48)
    assert by_hand["icl"] == 6 and counts["icl"][task.name]["cut"] == by_hand["icl"]
    assert counts["zeroshot"][task.name]["cut"] == by_hand["zeroshot"]
    assert warning(counts, 48).startswith("metalm eval: warning: ") and "max_length=48" in warning(counts, 48)
