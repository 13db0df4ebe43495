"""Objective-conflict diagnostics: swapped labels give cosine -1 at the decision level, a copy +1."""

import dataclasses
import json

import pytest
import torch
import yaml
from transformers import AutoTokenizer

import metalm
from metalm import ConfigError
from metalm.data import collate
from metalm.data.episode import Example
from metalm.diagnostics import cosine_matrix, decision_objective, gradient_conflict, plot_conflict, token_objective
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
    from metalm.diagnostics import conflict_batches

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
    from metalm.diagnostics import spread

    items = [str(i) for i in range(10)]
    assert spread(items, 4) == ["0", "3", "6", "9"]
    assert spread(items, 1) == ["0"] and spread(items, 0) == []
    assert spread(items, 20) == items


def _vector_objective(v: torch.Tensor):
    """An objective whose gradient with respect to a bias-free linear layer's weight is exactly ``v``."""
    from metalm.diagnostics import Objective

    return Objective("token", lambda model: (model.weight.flatten() * v).sum())


def test_the_noise_floor_separates_same_rule_from_flipped_by_hand():
    """Gradients built from orthonormal parts: a shared format f (|f|^2 = 1), a rule part +-l (|l|^2 = 1/2)
    and per-measurement noise n (orthogonal to everything else). Tasks a, b follow one rule with noise
    |n|^2 = 4; tasks c, d follow opposite rules with |n|^2 = 1/4. Raw cosines read alike, 0.273 (a, b:
    1.5 / 5.5) and 0.286 (c, d: 0.5 / 1.75); each task's halves agree at 1.5 / 5.5 and 1.5 / 1.75, so read
    against that floor a, b give exactly 1 and c, d exactly 1/3."""
    from metalm.diagnostics import against_noise_floor

    e = torch.eye(48, dtype=torch.float64)
    f, g = e[0], e[1] * 0.5 ** 0.5
    noise = iter(e[2:])
    model = torch.nn.Linear(48, 1, bias=False).double()

    def task(sign, sigma):
        return [_vector_objective(f + sign * g + sigma * next(noise)) for _ in range(3)]

    measured = gradient_conflict(model, {"w": model.weight}, {"a": task(1, 2.0), "b": task(1, 2.0),
                                                              "c": task(1, 0.5), "d": task(-1, 0.5)})
    cos = torch.tensor(measured["cosine"], dtype=torch.float64)
    assert cos[0, 1].item() == pytest.approx(1.5 / 5.5, abs=1e-6) and cos[2, 3].item() == pytest.approx(0.5 / 1.75,
                                                                                                        abs=1e-6)
    halves = {}
    for name, sign, sigma in (("a", 1, 2.0), ("b", 1, 2.0), ("c", 1, 0.5), ("d", -1, 0.5)):
        h = gradient_conflict(model, {"w": model.weight}, {"1": task(sign, sigma), "2": task(sign, sigma)})
        halves[name] = h["cosine"][0][1]
    assert halves["a"] == pytest.approx(1.5 / 5.5, abs=1e-6) and halves["c"] == pytest.approx(1.5 / 1.75, abs=1e-6)
    read = against_noise_floor(measured, halves)
    assert read[0][1] == pytest.approx(1.0, abs=1e-5) and read[2][3] == pytest.approx(1 / 3, abs=1e-5)
    assert read[0][0] == 1.0
    assert against_noise_floor(measured, {**halves, "a": None})[0][1] is None


def _rule_task(folder, name: str, numbers, flip: bool):
    rows = [{"text": f"n{k}", "label": "yes" if (k % 2 == 0) != flip else "no"} for k in numbers]
    (folder / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(
        {"name": name, "type": "classification", "source": {"kind": "jsonl", "path": f"{name}.jsonl"},
         "template": "Number: {{ text }}\nEven?", "labels": ["yes", "no"], "target_field": "label"}), encoding="utf-8")


def _rule_world(tmp_path):
    """A tiny model and three rule tasks on disjoint numbers: a and b share a rule, flip has the opposite labels."""
    path = save_tiny_model(tmp_path / "model", corpus(), "llama")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    _rule_task(tasks, "rule_a", range(0, 40), False)
    _rule_task(tasks, "rule_b", range(40, 80), False)
    _rule_task(tasks, "rule_flip", range(80, 120), True)
    return path, tasks


@pytest.mark.slow
def test_diagnose_reads_same_rule_and_flipped_tasks_against_their_split_half(tmp_path, capsys):
    """Three tasks on disjoint examples: a and b share a rule, flip has the opposite labels. A same-rule
    pair is two samples of one gradient distribution, as a task's two halves are, so it reads about 1
    against the floor; flip shares only what does not depend on the labels (the terms (s_i - 1/2) g_i,
    same sign for both labels: the comment of the swapped-label test above), so it reads well below.
    Measured here: a-b +1.18, a-flip -0.19, b-flip +0.05 (seeded episodes and weights: a deterministic
    computation; the bounds sit 0.38 and 0.45 from those figures, far above any machine's rounding)."""
    from metalm.cli import main

    path, tasks = _rule_world(tmp_path)
    out = tmp_path / "conflict.json"
    assert main(["diagnose", "--model", str(path), "--task-dir", str(tasks), "--tasks", "rule_a,rule_b,rule_flip",
                 "--batches", "6", "--ways", "2", "--shots", "4", "--queries", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["split_half"]) == {"rule_a", "rule_b", "rule_flip"}
    assert all(h is not None and 0 < h <= 1 for h in result["split_half"].values())
    read = result["against_floor"]
    assert read[0][1] > 0.8 and read[0][2] < 0.5 and read[1][2] < 0.5
    assert "| rule_a | +" in capsys.readouterr().out


def test_the_cli_and_the_python_call_give_the_same_json(tmp_path, capsys):
    """`metalm diagnose` parses, calls metalm.diagnose and prints: the same JSON from both, with the gap."""
    import metalm
    from metalm.cli import main

    path, tasks = _rule_world(tmp_path)
    (tasks / "splits").mkdir()
    (tasks / "splits" / "rules.yaml").write_text(yaml.safe_dump(
        {"name": "rules", "meta_train": ["rule_a"], "meta_val": ["rule_b"], "meta_test": ["rule_flip"]}),
        encoding="utf-8")
    args = ["--model", str(path), "--task-dir", str(tasks), "--split", "rules", "--extra-tasks", "rule_flip",
            "--batches", "1", "--ways", "2", "--shots", "2", "--queries", "2", "--gap", "--episodes", "1"]
    assert main(["diagnose", *args, "--json", str(tmp_path / "cli.json")]) == 0
    printed = capsys.readouterr().out
    got = metalm.diagnose(model=str(path), task_dirs=[tasks], split="rules", extra_tasks=["rule_flip"], batches=1,
                          ways=2, shots=2, queries=2, gap=True, episodes=1, output=tmp_path / "py.json", log=None)
    assert json.loads((tmp_path / "cli.json").read_text()) == json.loads((tmp_path / "py.json").read_text())
    assert got["tasks"] == ["rule_a", "rule_flip"] and got["gap_tasks"] == {"seen": ["rule_a"], "heldout": ["rule_flip"]}
    assert "| rule_a |" in printed and "| zeroshot |" in printed
    assert (tmp_path / "py.png").is_file() and (tmp_path / "py_gap.png").is_file()
    with pytest.raises(ConfigError, match="give exactly one"):
        metalm.diagnose(output=tmp_path / "x.json")
