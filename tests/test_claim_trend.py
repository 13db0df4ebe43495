"""The claim study's projection (benchmarks/fewshot/claim/trend.py): the followed row, its last gain paired on
the same episodes against a hand calculation, and the doublings projected only from a rising gain."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "fewshot" / "claim"))
import trend  # noqa: E402

TASKS = ["x", "y"]


def point(rows):
    """A curve point at 16 shots: ``rows`` maps a row to its per-episode accuracies (one seed), the same on
    both tasks, so a macro unit is that episode's accuracy."""
    per = {f"{row}|{t}|16": [list(accs)] for row, accs in rows.items() for t in TASKS}
    macro = [{"method": row, "shots": 16, "accuracy": sum(a) / len(a)} for row, a in rows.items()]
    return {"tasks": TASKS, "seeds": {"seeds": [1]}, "per_episode": per, "macro": macro}


def test_the_followed_row_and_its_last_gain_by_hand():
    early = point({"finetune": [1, 1, 1, 1], "mtl": [0.5, 0.5, 0.5, 0.5], "mtl-cal": [0.5, 0.5, 0.5, 0.75]})
    late = point({"finetune": [1, 1, 1, 1], "mtl": [0.75, 1.0, 0.75, 1.0], "mtl-cal": [0.5, 0.5, 0.5, 0.5]})
    # finetune is a baseline, never followed; at the last point mtl (0.875) beats mtl-cal (0.5)
    out = trend.along({150: early, 300: late})
    assert out["row"] == "mtl" and out["points"] == {"150": 0.5, "300": 0.875}
    d = [0.25, 0.5, 0.25, 0.5]  # per episode, late minus early
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    half = 3.182446305284263 * sd / 2  # t(0.975, 3) * sd / sqrt(4)
    g = out["last_gain"]
    assert g["diff"] == pytest.approx(0.375) and g["ci95"] == pytest.approx(half)
    assert g["rising"] is (0.375 - half > 0) is True
    assert trend.doublings(out, diff=-0.2, margin=0.05) == pytest.approx(0.25 / 0.375)
    assert trend.doublings(out, diff=0.1, margin=0.05) == 0.0  # already past the margin


def test_a_gain_whose_interval_holds_zero_projects_nothing_and_unpaired_points_are_refused():
    early = point({"hyper": [0.5, 1.0, 0.5, 1.0]})
    late = point({"hyper": [1.0, 0.5, 1.0, 0.75]})
    out = trend.along({1: early, 2: late})
    assert out["last_gain"]["diff"] == pytest.approx(0.0625) and out["last_gain"]["rising"] is False
    assert trend.doublings(out, diff=-0.1, margin=0.05) is None
    assert trend.along({1: early})["last_gain"] is None
    other = point({"hyper": [0.5, 1.0, 0.5, 1.0]})
    other["seeds"] = {"seeds": [2]}
    with pytest.raises(SystemExit, match="not paired"):
        trend.gain(late, other, "hyper")


def test_the_command_reads_curves_and_a_pool_curve_from_files(tmp_path):
    for name, accs in {"mtl.step-0000150": [0.5] * 4, "mtl.step-0000300": [0.75, 1.0, 0.75, 1.0],
                       "mtl_pool25.step-0000300": [0.5] * 4, "mtl_pool50.step-0000300": [0.5, 0.75, 0.5, 0.75]}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(point({"mtl": accs})))
    claim = tmp_path / "claim.json"
    claim.write_text(json.dumps({"target": {"shots": 16, "designated": "mtl", "reference": "icl-cal", "diff": -0.1,
                                            "ci95": 0.02, "margin": 0.05, "met": False}}))
    out = tmp_path / "trend.json"
    ran = subprocess.run([sys.executable, str(ROOT / "benchmarks/fewshot/claim/trend.py"), "mtl", "--pool", "mtl",
                          "--claim", str(claim), "--curves", str(tmp_path), "--json", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    report = json.loads(out.read_text())
    assert report["pool"]["points"] == {"25": 0.5, "50": 0.625, "100": 0.875}
    assert report["pool"]["last_gain"]["diff"] == pytest.approx(0.25)
    assert report["target"]["steps_doublings"]["mtl"] == pytest.approx(0.15 / 0.375)
    assert report["target"]["pool_doublings"] == pytest.approx(0.15 / 0.25)
