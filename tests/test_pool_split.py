"""The benchmark split's rule (scripts/make_pool_split.py) on synthetic learnability rows, and the
committed split reproduced from the committed learnability file when both exist."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from make_pool_split import choose_split, problems  # noqa: E402

sys.path.remove(str(ROOT / "scripts"))


def world():
    """12 families of 6 tasks, 6 types; every other task eligible, one family with none."""
    family, kind, eligible = {}, {}, {}
    for f in range(12):
        for i in range(6):
            name = f"f{f:02d}.t{i}"
            family[name], kind[name] = f"fam{f:02d}", f"type{f % 6}"
            eligible[name] = i % 2 == 0 and f != 5
    return family, kind, eligible


def test_the_rule_holds_out_whole_families_and_meets_the_constraints():
    family, kind, eligible = world()
    split = choose_split(eligible, family, kind)
    assert choose_split(eligible, family, kind) == split  # seeded: the same every time
    assert not problems(split, kind)
    assert len(split["meta_test"]) >= 20 and len({kind[t] for t in split["meta_test"]}) >= 4
    assert len(split["meta_val"]) >= 10
    assert all(eligible[t] for t in split["meta_test"] + split["meta_val"])
    held = {family[t] for t in split["meta_test"] + split["meta_val"]}
    assert not held & {family[t] for t in split["meta_train"]}  # no held-out family is trained on
    assert {family[t] for t in split["meta_test"]}.isdisjoint({family[t] for t in split["meta_val"]})
    assert "fam05" not in held  # no eligible task: meta-train
    listed = split["meta_train"] + split["meta_val"] + split["meta_test"] + split["unlisted"]
    assert sorted(listed) == sorted(family)  # every task once
    assert choose_split(eligible, family, kind, seed=1) != split


def test_too_few_eligible_tasks_are_reported_not_written():
    family, kind, eligible = world()
    few = {t: v and family[t] in ("fam00", "fam01") for t, v in eligible.items()}
    split = choose_split(few, family, kind)
    assert problems(split, kind) and any("fewer than 20" in p for p in problems(split, kind))


def test_the_committed_split_is_the_rules_output(tmp_path):
    committed = ROOT / "tasks" / "splits" / "bench_pool.yaml"
    if not committed.is_file():
        pytest.skip("the benchmark split is not chosen yet: learnability_pool_v2.json is still being measured "
                    "(benchmarks/MANIFEST.md)")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_pool_split
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    source = ROOT / committed.read_text().split(" from ", 1)[1].split("\n", 1)[0].rstrip(".")  # the header's file
    assert make_pool_split.main(source, out=tmp_path / "s.yaml") == 0
    assert (tmp_path / "s.yaml").read_text() == committed.read_text()
    assert json.loads(source.read_text())["headroom"]
