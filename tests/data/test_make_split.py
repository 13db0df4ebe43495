"""The benchmark split's rule (scripts/make_split.py) on made-up measurements, and the shipped file as its output."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("make_split", ROOT / "scripts" / "make_split.py")
make_split_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_split_module)
make_split, family = make_split_module.make_split, make_split_module.family


def world():
    """40 families: f0..f9 classification, g0..g29 multiple choice, each with 4 subtasks, of which the
    first 2 (f) or 3 (g) are learnable; the order interleaves them."""
    order, types, measured = [], {}, {}
    for k in range(4):
        for fam in [f"f{i}" for i in range(10)] + [f"g{i}" for i in range(30)]:
            name = f"{fam}.t{k}"
            order.append(name)
            types[name] = "classification" if fam.startswith("f") else "multiple_choice"
            measured[name] = {"learnable": k < (2 if fam.startswith("f") else 3)}
    pool = sorted(order) + ["gen_task"]
    types["gen_task"] = "generation"
    return order, measured, types, pool


def test_the_rule_fills_both_sets_by_family_and_keeps_families_out_of_meta_train():
    order, measured, types, pool = world()
    split = make_split(order, measured, types, pool)
    test, val, train = split["meta_test"], split["meta_val"], split["meta_train"]
    assert len(test) == 20 and len(val) == 10
    assert sum(types[t] == "classification" for t in test) >= 4 and sum(types[t] == "classification" for t in val) >= 2
    eval_families = {family(t) for t in test + val}
    assert not eval_families & {family(t) for t in train}  # no sibling of an evaluated task is trained on
    assert not {family(t) for t in test} & {family(t) for t in val}
    assert all(measured[t]["learnable"] for t in test + val)
    per_family = [sum(family(t) == f for t in test + val) for f in eval_families]
    assert max(per_family) <= 3
    assert "gen_task" in train and len(train) == len(pool) - 4 * len(eval_families)


def test_the_split_depends_on_the_measured_prefix_only():
    order, measured, types, pool = world()
    first = make_split(order, measured, types, pool)
    last = max(order.index(t) for t in first["meta_test"] + first["meta_val"])
    partial = {t: measured[t] for t in order[:last + 1]}  # measured just as far as the split's last task
    again = make_split(order, partial, types, pool)
    assert (again["meta_test"], again["meta_val"], again["meta_train"]) == \
        (first["meta_test"], first["meta_val"], first["meta_train"])
    # A gap in the order stops the reading there: later measurements are not used.
    gap = dict(measured)
    del gap[order[5]]
    with pytest.raises(ValueError, match="the 5 tasks measured in order cannot fill the split yet"):
        make_split(order, gap, types, pool)


def test_measuring_more_tasks_after_the_split_is_complete_does_not_change_it():
    """The shortest complete prefix decides: a sibling measured later (one more learnable task of an
    evaluated family) would otherwise take a place and push the last family's task out."""
    order, measured, types, pool = world()
    first = make_split(order, measured, types, pool)
    read = first["read"]
    assert read < len(order)  # the world has more measured tasks than the split needed
    shorter = make_split(order, {t: measured[t] for t in order[:read]}, types, pool)
    assert shorter == first
    with pytest.raises(ValueError, match=f"the {read - 1} tasks measured in order cannot fill"):
        make_split(order, {t: measured[t] for t in order[:read - 1]}, types, pool)
    later = {**measured, **{t: {"learnable": True} for t in order[read:]}}  # every later task learnable
    assert make_split(order, later, types, pool) == first


def test_too_few_learnable_classification_tasks_are_named():
    order, measured, types, pool = world()
    for t in order:
        if types[t] == "classification":
            measured[t] = {"learnable": False}
    with pytest.raises(ValueError, match="meta_test: 16 of 20 tasks, 0 of 4 classification; meta_val: 8 of 10"):
        make_split(order, measured, types, pool)


def test_the_shipped_split_is_the_rules_output(tmp_path):
    out = tmp_path / "bench.yaml"
    assert make_split_module.main(["--out", str(out)]) == 0
    assert out.read_text() == (ROOT / "tasks" / "splits" / "bench.yaml").read_text()
    criterion = json.loads((ROOT / "benchmarks" / "results" / "learnability.json").read_text())["criterion"]
    assert criterion in out.read_text()
