"""Objective-conflict diagnostics: opposite tasks give cosine -1, identical tasks +1."""

import torch

import metalm
from metalm import AdapterConfig
from metalm.diagnose import cosine_matrix, gradient_conflict, plot_conflict

from .conftest import make_model


def _batch(answer: int, seed: int, vocab: int = 64, rows: int = 24, length: int = 8) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, length), generator=g)
    ids[:, -1] = answer
    labels = torch.full_like(ids, -100)
    labels[:, -1] = answer
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_cosine_matrix_by_hand():
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.0]])
    r = 1 / 2 ** 0.5
    assert torch.allclose(cosine_matrix(g), torch.tensor([[1.0, r, -1.0], [r, 1.0, -r], [-1.0, -r, 1.0]]))


def test_opposite_tasks_conflict_and_identical_tasks_agree(tmp_path):
    adapter = AdapterConfig(rank=4, layers="all")
    model = make_model("gpt2", adapter=adapter, vocab_size=64)
    params = metalm.select_parameters(model, adapter).meta_params(model)
    # Fit the mixture of "always answer 3" and "always answer 4": the model then splits its mass between the
    # two answers, and the two tasks pull the same weights in opposite directions.
    opt = torch.optim.Adam(params.values(), lr=3e-2)
    for step in range(60):
        opt.zero_grad()
        loss = metalm.lm_loss(model, {}, _batch(3, step)) + metalm.lm_loss(model, {}, _batch(4, 1000 + step))
        loss.backward()
        opt.step()
    batches = {"three": [_batch(3, 50 + b) for b in range(3)], "four": [_batch(4, 50 + b) for b in range(3)],
               "three_again": [_batch(3, 90 + b) for b in range(3)]}
    result = gradient_conflict(model, params, batches)
    cos = torch.tensor(result["cosine"])
    assert result["tasks"] == ["three", "four", "three_again"]
    assert cos[0, 1] < -0.95 and cos[1, 2] < -0.9  # opposite targets
    assert cos[0, 2] > 0.9  # the same task on other inputs
    assert torch.allclose(cos.diagonal(), torch.ones(3))
    assert (plot_conflict(result, tmp_path / "conflict.png")).stat().st_size > 1000


def test_spread_picks_evenly_including_both_ends():
    from metalm.diagnose import spread

    items = [str(i) for i in range(10)]
    assert spread(items, 4) == ["0", "3", "6", "9"]
    assert spread(items, 1) == ["0"] and spread(items, 0) == []
    assert spread(items, 20) == items
