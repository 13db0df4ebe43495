"""Tokenization and collation into batches for the inner loop."""

import pytest
import torch

import metalm
from metalm.data import CollateConfig, EpisodeSampler, Example, SamplerConfig, collate, tensorize
from metalm.errors import BatchError


def test_labels_are_exactly_the_answer_tokens(tokenizer):
    examples = [Example("Q: Is the apple yes?\nA:", " yes"), Example("Which follows river?", " river-1 maybe")]
    batch = collate(examples, tokenizer)
    for row, ex in enumerate(examples):
        answer = tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
        prompt = tokenizer(ex.prompt)["input_ids"]
        n = len(prompt) + len(answer)
        assert batch["input_ids"][row, :n].tolist() == prompt + answer
        assert batch["input_ids"][row, 0] == tokenizer.bos_token_id
        assert batch["labels"][row, :len(prompt)].eq(-100).all()
        assert batch["labels"][row, len(prompt):n].tolist() == answer
        assert batch["labels"][row, n:].eq(-100).all() and batch["attention_mask"][row].sum() == n
        assert batch["input_ids"][row, n:].eq(tokenizer.pad_token_id).all()


def test_truncation_drops_the_start_of_the_prompt_never_the_answer(tokenizer):
    ex = Example(" ".join(["apple river stone"] * 30) + " END Q:", " yes unsure")
    full = collate([ex], tokenizer, CollateConfig(max_length=512))
    answer = tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
    cut = collate([ex], tokenizer, CollateConfig(max_length=12))
    ids = cut["input_ids"][0].tolist()
    assert len(ids) == 12 and ids[0] == tokenizer.bos_token_id
    assert ids[-len(answer):] == answer and cut["labels"][0, -len(answer):].tolist() == answer
    assert ids[1:-len(answer)] == full["input_ids"][0, : -len(answer)].tolist()[-(11 - len(answer)):]
    with pytest.raises(BatchError, match="does not fit max_length"):
        collate([ex], tokenizer, CollateConfig(max_length=2))


def test_language_modeling_text_is_cut_at_the_end(tokenizer):
    ex = Example("", "HAMLET. Line 1 of the play, with some words to read. " * 5)
    batch = collate([ex], tokenizer, CollateConfig(max_length=10))
    ids = tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
    assert batch["input_ids"][0].tolist() == [tokenizer.bos_token_id] + ids[:9]
    assert batch["labels"][0].tolist() == [-100] + ids[:9]


def test_left_padding_and_eos(tokenizer):
    examples = [Example("Q: a", " yes"), Example("Q: a much longer prompt here", " no")]
    batch = collate(examples, tokenizer, CollateConfig(padding_side="left", add_eos=True))
    assert batch["attention_mask"][:, -1].eq(1).all() and batch["attention_mask"][0, 0] == 0
    assert batch["labels"][:, -1].eq(tokenizer.eos_token_id).all()


def test_episodes_feed_the_inner_loop(registry, tokenizer):
    sampler = EpisodeSampler([registry["toy_cls"], registry["toy_gen"]], SamplerConfig(ways=3, shots=2, queries=2), seed=0)
    model = metalm.load_model(metalm.tiny_config("llama", vocab_size=len(tokenizer)), seed=0)
    adapter = metalm.AdapterConfig(rank=2)
    model = metalm.apply_adapter(model, adapter)
    fast = metalm.select_parameters(model, adapter).fast_params(model)
    for _ in range(3):
        episode = tensorize(sampler.sample(), tokenizer)
        assert episode.support["input_ids"].shape[0] == len(episode.text.support)
        adapted = metalm.adapt(model, fast, episode.support, steps=2, lr=0.5)
        with torch.no_grad():
            before = metalm.lm_loss(model, fast, episode.support)
            after = metalm.lm_loss(model, adapted, episode.support)
        assert after < before
