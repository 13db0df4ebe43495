"""The evaluation harness against independent computations: HF forward log-probs, HF generate, hand-computed metrics."""

import math

import pytest
import torch
from transformers import AutoTokenizer

import metalm
from metalm.data import CollateConfig, EpisodeSampler, SamplerConfig
from metalm.data.episode import Example
from metalm.errors import ConfigError
from metalm.eval import EvalConfig, Harness, exact_match, greedy_generate, mean_ci95, option_scores, token_f1
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
    assert mean == 0.5 and ci == pytest.approx(3.182 * sd / 2)
    assert mean_ci95([0.7]) == (0.7, 0.0)


def test_harness_pairs_episodes_and_keeps_the_model(tiny, registry):
    _, _, path = tiny
    config = TrainConfig(model=path, adapter=metalm.AdapterConfig(rank=2), collate=CollateConfig(max_length=64),
                         algorithm={"name": "fomaml", "inner": {"steps": 1, "lr": 0.1}})
    tok, model, _, algo = build_model(config, torch.device("cpu"))
    base = {k: v.detach().clone() for k, v in algo.meta_parameters().items()}
    trained = {k: v + 0.01 * torch.randn_like(v) for k, v in base.items()}
    harness = Harness(algo, tok, base, trained, EvalConfig(shots=[1, 2], episodes=2, ways=2, queries=1))
    tasks = [registry["toy_cls"], registry["toy_gen"]]
    eps = harness.episodes(tasks[0], 1)
    assert harness.episodes(tasks[0], 1) is eps  # every method reads the same episodes
    report = harness.run(tasks)
    assert {(r["method"], r["task"], r["shots"]) for r in report["results"]} == \
        {(m, t.name, k) for m in ("zeroshot", "icl", "finetune", "meta") for t in tasks for k in (1, 2)}
    assert all(0 <= r["accuracy"] <= 1 and r["episodes"] == 2 for r in report["results"])
    assert report["chance"]["toy_cls"] == 0.5 and report["chance"]["toy_gen"] == 0.0
    assert all(torch.equal(v, base[k]) for k, v in algo.meta_parameters().items())  # swapped back
    # The same episodes scored twice give the same numbers.
    again = Harness(algo, tok, base, trained, EvalConfig(shots=[1, 2], episodes=2, ways=2, queries=1)).run(tasks)
    assert again["results"] == report["results"]


def test_finetune_lr_is_chosen_on_validation_tasks(tiny, registry):
    _, _, path = tiny
    config = TrainConfig(model=path, adapter=metalm.AdapterConfig(rank=2), collate=CollateConfig(max_length=64))
    tok, _, _, algo = build_model(config, torch.device("cpu"))
    base = {k: v.detach().clone() for k, v in algo.meta_parameters().items()}
    harness = Harness(algo, tok, base, None, EvalConfig(methods=["finetune"], finetune_lrs=[0.0, 1.0], ways=2,
                                                        queries=1, val_episodes=1))
    lr, steps = harness.choose_finetune([registry["toy_mc"]])
    assert lr in (0.0, 1.0) and harness.finetune_lr == lr and steps == algo.inner.steps == harness.finetune_steps
    assert set(k[0] for k in harness._episodes) == {"toy_mc"}  # only validation episodes were drawn
    with pytest.raises(ConfigError, match="meta needs a trained run"):
        Harness(algo, tok, base, None, EvalConfig(methods=["meta"]))
    with pytest.raises(ConfigError, match="unknown method"):
        EvalConfig(methods=["mtl2"])


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
    config = CollateConfig(max_length=48)  # the last prompt is truncated from the left
    shared = option_scores(model, fast, examples, tok, config, batch_size=4)
    separate = option_scores(model, fast, examples, tok, config, shared_prompt=False)
    assert [len(s) for s in shared] == [3, 3, 2, 3]
    assert torch.allclose(torch.tensor(sum(shared, [])), torch.tensor(sum(separate, [])), atol=1e-9)
