"""Learnability (metalm.eval.learnability) on synthetic tasks whose ceiling is known."""

from __future__ import annotations

import json

import pytest
import scipy.stats
import torch
from transformers import AutoTokenizer

import metalm
from metalm import AdapterConfig, MetaConfig
from metalm.data import Task, parse_task
from metalm.errors import ConfigError
from metalm.eval.learnability import (
    CeilingConfig,
    chance,
    dev_part,
    measure_task,
    split_examples,
    train_lora,
    verdict,
    wilson,
)
from metalm.models import save_tiny_model

from .data.fixtures import corpus


@pytest.mark.parametrize(("k", "n"), [(38, 60), (0, 30), (60, 60), (7, 9)])
def test_wilson_equals_scipy(k, n):
    lo, hi = wilson(k, n)
    ref = scipy.stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)


def test_verdict_by_hand():
    # 40/60 = 0.667 >= 0.5 + 0.1, Wilson low 0.540 > 0.5: learnable; 36/60 = 0.6 clears the margin but its
    # interval (low 0.474) does not exclude chance; 57/60 on a 0.9-chance task misses the margin.
    assert verdict(0.5, [1.0] * 40 + [0.0] * 20, 0.1)[1]
    assert not verdict(0.5, [1.0] * 36 + [0.0] * 24, 0.1)[1]
    assert not verdict(0.9, [1.0] * 57 + [0.0] * 3, 0.1)[1]


def _task(home, name: str, rows: list[dict]) -> Task:
    folder = home / "data" / "bigbench" / name
    folder.mkdir()
    (folder / "task.json").write_text(json.dumps({"examples": rows}), encoding="utf-8")
    return Task(parse_task({"name": name, "type": "classification", "labels": ["yes", "no"], "template": "{{ input }}\nA:",
                            "source": {"kind": "bigbench", "task": name}}), f"{name}.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp("m") / "model", corpus(), "llama")
    torch.manual_seed(0)
    adapter = AdapterConfig(kind="lora", rank=4, layers="top:1")
    model = metalm.apply_adapter(metalm.load_model(path, dtype=torch.float64), adapter)
    sel = metalm.select_parameters(model, adapter, MetaConfig(shared="none"))
    return model, sel, AutoTokenizer.from_pretrained(path)


def test_a_task_with_no_signal_sits_at_chance(home, tiny):
    """Every example has the same input and half say yes: any model scores exactly 1/2 on the balanced test set."""
    model, sel, tok = tiny
    rows = [{"input": "Is the apple a stone?", "target_scores": {"yes": int(i % 2 == 0), "no": int(i % 2 == 1)}}
            for i in range(80)]
    cfg = CeilingConfig(train_examples=40, test_examples=20, steps=6, batch_size=8, lr=1e-2, max_length=32)
    row = measure_task(model, sel.fast_params(model), _task(home, "flat", rows), tok, cfg, sel.lowest_adapted_layer())
    assert row["chance"] == 0.5 and row["ceiling"] == 0.5 and row["zeroshot"] == 0.5 and row["n"] == 20
    assert row["learnable"] is False and row["train"] == 40
    # Its ceiling is known (1/2) and in-context learning cannot beat it either: no headroom.
    assert row["icl"] == 0.5 and row["headroom"] is False


def test_the_headroom_rule():
    """The better of zero-shot and ICL at least ``headroom`` below the ceiling (binary-exact figures)."""
    from metalm.eval.learnability import has_headroom

    assert has_headroom(0.25, 0.5, 0.75, 0.25) and not has_headroom(0.25, 0.625, 0.75, 0.25)
    assert not has_headroom(0.625, 0.25, 0.75, 0.25)  # zero-shot alone leaves no room
    assert has_headroom(0.5, None, 0.75, 0.25) and not has_headroom(0.625, None, 0.75, 0.25)  # generation: no ICL
    assert "at least 0.1 below the ceiling" in CeilingConfig().headroom_rule()


@pytest.mark.learning
def test_a_rule_the_model_can_learn_is_learnable(home, tiny):
    """The answer is a word of the input: a LoRA trained on 64 examples learns it; the pretrained tiny model
    does not know it, and the test examples are disjoint from the training ones."""
    model, sel, tok = tiny
    words = "apple river stone cloud lamp tiger violin garden mirror candle forest rocket".split()
    rows = [{"input": f"{w} number {i} says {lab}", "target_scores": {"yes": int(lab == "yes"), "no": int(lab == "no")}}
            for i in range(40) for w, lab in ((words[i % 12], "yes"), (words[(i + 5) % 12], "no"))]
    task = _task(home, "copy", rows)
    cfg = CeilingConfig(train_examples=64, test_examples=16, steps=40, batch_size=16, lr=3e-2, max_length=32)
    train, test = split_examples(task, cfg)
    assert not {e.prompt for e in train} & {e.prompt for e in test} and chance("classification", test) == 0.5
    row = measure_task(model, sel.fast_params(model), task, tok, cfg, sel.lowest_adapted_layer())
    assert row["learnable"] is True and row["ceiling"] > row["zeroshot"]


def test_selected_checkpoints_are_the_fixed_budget_runs(home, tiny):
    """Revision 2 keeps checkpoints of one run: each equals the fixed-budget ceiling trained for that many steps
    (a second code path), and with every development score tied (a task with no signal) the rule takes the
    fewest steps and then the smaller lr."""
    from metalm.eval.learnability import _fit, _minibatches

    model, sel, tok = tiny
    rows = [{"input": f"Is thing {i} a stone?", "target_scores": {"yes": int(i % 2 == 0), "no": int(i % 2 == 1)}}
            for i in range(80)]
    task = _task(home, "flat2", rows)
    cfg = CeilingConfig(train_examples=40, test_examples=20, batch_size=8, lr=1e-2, max_length=32)
    train, _ = split_examples(task, cfg)
    init, layer = sel.fast_params(model), sel.lowest_adapted_layer()
    gen = torch.Generator().manual_seed(cfg.seed)
    kept = _fit(model, init, _minibatches(model, train, tok, cfg, layer, gen), cfg.lr, [3, 7], gen)
    for steps, got in zip((3, 7), kept, strict=True):
        want = train_lora(model, init, train, tok, CeilingConfig(**{**vars(cfg), "steps": steps}), layer)
        assert all(torch.equal(got[k], want[k]) for k in want)
    same = [{"input": "Is the apple a stone?", "target_scores": {"yes": int(i % 2 == 0), "no": int(i % 2 == 1)}}
            for i in range(80)]
    flat = CeilingConfig(**{**vars(cfg), "select_steps": (4, 2), "select_lrs": (1e-2, 1e-3)})
    row = measure_task(model, init, _task(home, "flat3", same), tok, flat, layer)
    assert row["chosen"]["lr"] == 1e-3 and row["chosen"]["steps"] == 2 and set(row["chosen"]["dev"].values()) == {0.5}
    assert "development part" in flat.criterion() and row["ceiling"] == 0.5


def test_the_development_part_and_known_scores(home, tiny):
    """A quarter of each class (at least one) chooses the budget; an earlier row's ICL score is reused only when
    zero-shot is measured again to the digit."""
    from metalm.data.episode import Example

    exs = [Example(prompt=f"p{i}", answer="ab"[i % 2], options=["a", "b"], label=i % 2) for i in range(10)]
    fit, dev = dev_part(exs, 0.25, "classification")
    assert [e.prompt for e in dev] == ["p0", "p1"]  # round(5 * 0.25) = 1 of each class, the first
    assert [e.prompt for e in fit] == [f"p{i}" for i in range(2, 10)]
    model, sel, tok = tiny
    same = [{"input": "Is the apple a stone?", "target_scores": {"yes": int(i % 2 == 0), "no": int(i % 2 == 1)}}
            for i in range(80)]
    cfg = CeilingConfig(train_examples=40, test_examples=20, steps=2, batch_size=8, lr=1e-2, max_length=32)
    task = _task(home, "flat4", same)
    args = (model, sel.fast_params(model), task, tok, cfg, sel.lowest_adapted_layer())
    assert measure_task(*args, known={"zeroshot": 0.5, "icl": 0.125})["icl"] == 0.125
    assert measure_task(*args, known={"zeroshot": 0.55, "icl": 0.125})["icl"] == 0.5
    with pytest.raises(ConfigError, match="select_lrs"):
        CeilingConfig(select_steps=(32,))
