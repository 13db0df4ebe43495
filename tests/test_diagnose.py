"""Objective-conflict diagnostics: swapped labels give cosine -1 at the decision level, a copy +1."""

import dataclasses

import pytest
import torch
from transformers import AutoTokenizer

import metalm
from metalm import ConfigError
from metalm.data import collate
from metalm.data.episode import Example
from metalm.diagnose import cosine_matrix, decision_objective, gradient_conflict, plot_conflict, token_objective
from metalm.hub import model_dir, resolve_model
from metalm.models import save_tiny_model, train_tokenizer

from .data.fixtures import corpus

CACHED = (model_dir("smollm2-135m") / "manifest.json").is_file()


WORDS = ["apple", "river", "stone", "lamp", "cloud", "tiger", "bread", "glass"]


def _examples(flip: bool, words: list[str] = WORDS, label: int | None = None) -> list[Example]:
    """A yes/no task on ``words`` (label by position parity, or ``label`` for all); ``flip`` swaps every label."""
    return [Example(f"Q: Is {w} number {i} yes?\nA:", "", [" yes", " no"], ((i % 2) if label is None else label) ^ flip)
            for i, w in enumerate(words)]


def _measure(model, tokenizer, groups: dict[str, list[list[Example]]], loss: str) -> torch.Tensor:
    make = (lambda exs: decision_objective(exs, tokenizer)) if loss == "decision" else \
        (lambda exs: token_objective(collate([dataclasses.replace(e, answer=e.options[e.label]) for e in exs],
                                             tokenizer)))
    params = dict(model.named_parameters())
    result = gradient_conflict(model, params, {name: [make(b) for b in batches] for name, batches in groups.items()})
    assert result["losses"] == {name: loss for name in groups}
    return torch.tensor(result["cosine"])


def test_cosine_matrix_by_hand():
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.0]])
    r = 1 / 2 ** 0.5
    assert torch.allclose(cosine_matrix(g), torch.tensor([[1.0, r, -1.0], [r, 1.0, -r], [-1.0, -r, 1.0]]))


def swapped_label_checks(model, tokenizer) -> None:
    """Shared by the tiny-model test and the SmolLM2 test.

    One example per measurement makes the answer exact: with two options and score difference
    ``d``, the decision loss's gradient is ``-(1 - s) grad d`` for label 0 and ``s grad d`` for
    label 1 (``s = sigmoid(d)``): the same vector times scalars of opposite sign, so the cosine is
    -1 and a copy's +1 up to float rounding (relative 1e-6 in fp32), on any model and any machine.
    """
    single = {"yes_no": [[e] for e in _examples(False)], "no_yes": [[e] for e in _examples(True)],
              "yes_no_copy": [[e] for e in _examples(False)]}
    cos = _measure(model, tokenizer, single, "decision")
    assert cos[0, 1] < -1 + 1e-5 and cos[1, 2] < -1 + 1e-5
    assert cos[0, 2] > 1 - 1e-5
    assert torch.allclose(cos.diagonal(), torch.ones(3))


def test_swapped_labels_are_opposite_at_the_decision_level(tmp_path):
    path = save_tiny_model(tmp_path / "model", corpus(), "llama")
    model, tokenizer = metalm.load_model(path), AutoTokenizer.from_pretrained(path)
    swapped_label_checks(model, tokenizer)
    # Several examples per measurement: with s_i = 1/2 + e_i, "always yes" has gradient
    # -sum (1/2 - e_i) g_i and "always no" sum (1/2 + e_i) g_i (g_i = grad d_i): opposite up to the
    # terms in e_i, which are small on an untrained model (its options score nearly alike).
    several = {"yes": [_examples(False, label=0)], "no": [_examples(False, label=1)]}
    assert _measure(model, tokenizer, several, "decision")[0, 1] < -0.9
    # The answer tokens' loss on the same pair is dominated by the format both share (measured +0.01).
    assert _measure(model, tokenizer, several, "token")[0, 1] > -0.9
    # With both labels in each task, the term sum e_i g_i common to both (each asks for balanced yes/no
    # scores) no longer sits beside a large opposite part, and swapped tasks are not opposite
    # (measured -0.14); the token loss calls them aligned (measured +0.98, the issue's +0.86).
    mixed = {"yes_no": [_examples(False)], "no_yes": [_examples(True)]}
    token = _measure(model, tokenizer, mixed, "token")[0, 1]
    assert token > 0.5 and _measure(model, tokenizer, mixed, "decision")[0, 1] < token


def test_conflict_batches_pick_the_loss_by_task_type(registry):
    from metalm.diagnose import conflict_batches

    tokenizer = train_tokenizer(corpus())
    tasks = [registry["toy_cls"], registry["toy_gen"]]
    auto = conflict_batches(tasks, tokenizer, batches=1)
    assert [auto[t.name][0].kind for t in tasks] == ["decision", "token"]
    assert {o.kind for v in conflict_batches(tasks, tokenizer, batches=1, loss="token").values() for o in v} == \
        {"token"}
    with pytest.raises(ConfigError, match="loss: task toy_gen .*no candidate answers"):
        conflict_batches(tasks, tokenizer, batches=1, loss="decision")
    with pytest.raises(ConfigError, match="loss: 'rank'"):
        conflict_batches(tasks, tokenizer, loss="rank")


def test_plot_conflict(tmp_path):
    result = {"tasks": ["a", "b"], "cosine": [[1.0, -0.5], [-0.5, 1.0]], "mean_offdiag": -0.5}
    assert (plot_conflict(result, tmp_path / "conflict.png")).stat().st_size > 1000


@pytest.mark.realmodel
@pytest.mark.skipif(not CACHED, reason="run `metalm download smollm2-135m` first")
def test_swapped_labels_are_opposite_on_smollm2():
    path = resolve_model("smollm2-135m")
    swapped_label_checks(metalm.load_model(path), AutoTokenizer.from_pretrained(path))


def test_spread_picks_evenly_including_both_ends():
    from metalm.diagnose import spread

    items = [str(i) for i in range(10)]
    assert spread(items, 4) == ["0", "3", "6", "9"]
    assert spread(items, 1) == ["0"] and spread(items, 0) == []
    assert spread(items, 20) == items
