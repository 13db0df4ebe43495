"""The claim study's observed training cost (benchmarks/fewshot/claim/step_costs.py) against a hand count."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "fewshot" / "claim"))
import step_costs  # noqa: E402


def test_observed_costs_count_a_resumed_step_once_and_project_the_steps_left(tmp_path):
    state = tmp_path / "runs" / "long-multitask"
    state.mkdir(parents=True)
    rows = [{"step": 1, "seconds": 9.0, "tokens": [10, 20]}, {"step": 2, "seconds": 2.0, "tokens": [30]},
            {"event": "resumed"}, {"step": 2, "seconds": 4.0, "tokens": [40]}, {"step": 3, "seconds": 5.0}]
    (state / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "multitask.yaml").write_text((ROOT / "benchmarks/fewshot/claim/multitask.yaml").read_text())
    costs = tmp_path / "cost.json"
    costs.write_text(json.dumps({"rows": {"multitask/4": {"seconds_mean": 3.0}}}))
    out = step_costs.table(tmp_path / "runs", costs, configs)
    assert list(out) == ["multitask"]  # candidates without a log are left out
    r = out["multitask"]
    assert (r["steps"], r["last"], r["max_steps"]) == (3, 3, 300)
    assert r["seconds_mean"] == pytest.approx(6.0) and r["seconds_median"] == 5.0 and r["seconds_max"] == 9.0
    assert r["tokens_mean"] == pytest.approx((30 + 40 + 0) / 3)
    assert r["ratio"] == pytest.approx(2.0) and r["hours_left"] == pytest.approx(297 * 6.0 / 3600)
