import math

import pytest
import torch

import metalm
from metalm import BatchError, lm_loss, prepare_batch, target_logits

from .conftest import episodes, make_model, reference_loss


def padded_batch() -> dict:
    ids = torch.tensor([[5, 9, 11, 40, 41, 42, 0, 0], [7, 8, 9, 10, 11, 12, 13, 14]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1] * 8])
    labels = torch.full_like(ids, -100)
    labels[0, 4:6] = ids[0, 4:6]  # two targets in row 0
    labels[1, 7] = ids[1, 7]      # one in row 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_loss_matches_full_logit_forward(arch):
    model = make_model(arch)
    for batch in (padded_batch(), episodes(1)[0].support):
        params = dict(model.named_parameters())
        assert torch.allclose(lm_loss(model, params, batch), reference_loss(model, batch), atol=1e-12)


def test_target_logits_are_the_full_logits_at_target_positions(arch):
    model = make_model(arch)
    batch = prepare_batch(padded_batch())
    assert batch["target_positions"].tolist() == [[3, 4], [6, 0]]
    assert batch["target_ids"].tolist() == [[41, 42], [14, -100]]
    picked = target_logits(model, {}, batch)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert picked.shape == (2, 2, model.config.vocab_size)
    assert torch.allclose(picked[0], full[0, 3:5], atol=1e-12)
    assert torch.allclose(picked[1, 0], full[1, 6], atol=1e-12)


def test_hf_builtin_loss_agrees():
    # transformers' own loss path (fp32 upcast inside) as a second reference.
    model = make_model("llama")
    batch = padded_batch()
    hf = model(**batch).loss
    assert torch.allclose(lm_loss(model, {}, batch), hf.double(), atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("labels"), "missing 'labels'"),
    (lambda b: b.update(labels=torch.full_like(b["input_ids"], -100)), "no target tokens"),
    (lambda b: b.update(labels=b["labels"][:, :3]), "must both be"),
    (lambda b: b.update(attention_mask=b["attention_mask"][:1]), "attention_mask"),
])
def test_malformed_batches_raise_batch_error(change, message):
    batch = padded_batch()
    change(batch)
    with pytest.raises(BatchError, match=message):
        prepare_batch(batch, "support")
    with pytest.raises(metalm.MetalmError):
        prepare_batch(batch)


def test_left_and_right_padding_give_the_same_loss(arch):
    # GPT-2 has absolute positions: positions must count real tokens, not padding.
    model = make_model(arch)
    right = padded_batch()
    left = {k: torch.stack([v[0].roll(2), v[1]]) for k, v in right.items()}
    left["labels"][0, :2] = -100
    assert left["attention_mask"][0, :2].eq(0).all()
    assert torch.allclose(lm_loss(model, {}, right), lm_loss(model, {}, left), atol=1e-10)


def uneven_batch(vocab: int = 50) -> dict:
    """Rows of 4 to 64 tokens (the tiny models' window), right-padded to 64, each with 1-3 answer tokens
    at its end."""
    g = torch.Generator().manual_seed(3)
    lengths = [64, 4, 6, 60, 12, 5, 56, 8]
    ids = torch.zeros(len(lengths), 64, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(1, vocab, (n,), generator=g)
        mask[r, :n] = 1
        answer = 1 + r % 3 if n > 3 else 1
        labels[r, n - answer:n] = ids[r, n - answer:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_a_batch_split_by_length_gives_the_whole_batchs_loss_and_gradient(arch):
    """split_by_length regroups rows of 4 to 64 tokens into parts padded to their own longest row; the
    target-weighted loss equals the whole batch's mean over target tokens, and so does its gradient
    (float64: the paths differ by rounding only), with and without a frozen-prefix cache. Left-padded
    batches and batches that gain nothing come back without parts."""
    from metalm.losses import cache_prefix, lm_loss_and_accuracy, split_by_length

    model = make_model(arch, adapter=metalm.AdapterConfig(rank=2))
    batch = uneven_batch()
    split = split_by_length(batch)
    parts = split["parts"]
    assert len(parts) >= 2 and sum(p["input_ids"].shape[0] for p in parts) == 8
    assert sum(p["input_ids"].numel() for p in parts) < batch["input_ids"].numel() * 0.75
    assert all(int(p["attention_mask"][:, -1].max()) == 1 for p in parts)  # trimmed to their longest row
    assert math.isclose(sum(split["weights"]), 1.0)
    fast = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()
            if "lora_" in n and any(f".{i}." in n for i in (2, 3))}  # the top two layers: a prefix cache below
    whole = lm_loss(model, fast, batch)
    (g_whole,) = [torch.autograd.grad(whole, list(fast.values()))]
    cached = cache_prefix(model, split, 2)
    assert all("prefix_cache" in p for p in cached["parts"])
    for candidate in (split, cached):
        loss = lm_loss(model, fast, candidate)
        assert torch.allclose(loss, whole, rtol=1e-12, atol=0)
        grads = torch.autograd.grad(loss, list(fast.values()))
        assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-13) for a, b in zip(grads, g_whole, strict=True))
    _, acc = lm_loss_and_accuracy(model, fast, split)
    assert torch.allclose(acc, lm_loss_and_accuracy(model, fast, batch)[1], atol=1e-12)
    left = {k: v.flip(1) for k, v in batch.items()}  # left-padded: not split
    assert "parts" not in split_by_length(left)
    assert "parts" not in split_by_length(padded_batch())  # 6 and 8 tokens: nothing to gain
