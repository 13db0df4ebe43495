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
