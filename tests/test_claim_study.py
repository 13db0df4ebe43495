"""benchmarks/fewshot/claim/study.sh, the claim study as one resumable command, at a tiny size: two
candidates in two lanes side by side (each trained through train_long.sh, its curve point scored, its
chosen checkpoint scored at 4 and 16 shots), then choose.py's selection, then a stop until the selection
is committed (PLAN.md: written before any held-out task is scored). A second run repeats nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .data.fixtures import make_world

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fewshot" / "claim" / "study.sh"


def _world(tmp_path):
    world = make_world(tmp_path, max_steps=2, val_every=0, checkpoint_every=1)
    tasks = tmp_path / "tasks"
    # a meta-val task with enough examples for 16 shots, 2-way (the curve points score 16 shots)
    rows = [{"text": f"n{k}", "label": "even" if k % 2 == 0 else "odd"} for k in range(80)]
    (tasks / "parity.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tasks / "parity.yaml").write_text(yaml.safe_dump(
        {"name": "parity", "type": "classification", "source": {"kind": "jsonl", "path": "parity.jsonl"},
         "template": "N: {{ text }}\nA:", "labels": ["even", "odd"]}), encoding="utf-8")
    split = tasks / "splits" / "study.yaml"
    split.write_text(yaml.safe_dump({"name": "study", "meta_train": ["toy_cls", "toy_mc"], "meta_val": ["parity"],
                                     "meta_test": ["news"]}), encoding="utf-8")
    config = {**yaml.safe_load(world["config"].read_text()), "split": str(split)}
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "a.yaml").write_text(yaml.safe_dump(config))
    (configs / "b.yaml").write_text(yaml.safe_dump({**config, "algorithm": {"name": "reptile",
                                                                             "inner": {"steps": 2, "lr": 0.3}}}))
    protocol = tasks / "protocols" / "tiny.yaml"
    protocol.parent.mkdir()
    protocol.write_text(yaml.safe_dump({"split": str(split), "evaluate_on": "meta_val", "shots": [4], "episodes": 1,
                                        "ways": 2, "queries": 1, "max_length": 64}))
    return {**world["env"], "BIN": str(Path(sys.executable).parent), "CONFIGS": str(configs), "ORDER": "a b",
            "LANE_A": "a", "LANE_B": "b", "RUNS_DIR": str(tmp_path / "runs"), "CURVES": str(tmp_path / "curves"),
            "SELECTION": str(tmp_path / "selection.json"), "LONG_RUNS_JSON": str(tmp_path / "long_runs.json"),
            "LONG_RUNS_MANIFEST": str(tmp_path / "MANIFEST.md"), "LONG_RUNS_STATE": str(tmp_path / "committed"),
            "PROTOCOL": str(protocol), "SIZING": "none", "STEPS": "2", "FT": "finetune_steps=[1] finetune_lrs=[0.3]"}


@pytest.mark.slow  # two trainings and four evaluations, each a process of its own
def test_two_lanes_then_the_selection_then_a_stop(tmp_path):
    env = _world(tmp_path)
    ran = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "runs").glob("*.log")))
    assert ran.returncode == 3, ran.stderr + logs
    assert "commit" in ran.stderr and "selection.json" in ran.stderr
    runs = json.loads((tmp_path / "long_runs.json").read_text())
    assert {r: e["status"] for r, e in runs.items()} == {str(tmp_path / "runs" / f"long-{n}"): "finished" for n in "ab"}
    for name in "ab":  # its curve point and its final scoring at 4 and 16 shots
        assert (tmp_path / "curves" / f"{name}.step-0000002.json").is_file()
        final = json.loads((tmp_path / "curves" / f"{name}.step-0000002.final.json").read_text())
        assert sorted({r["shots"] for r in final["results"]}) == [4, 16]
    selection = json.loads((tmp_path / "selection.json").read_text())
    assert list(selection["candidates"]) == [str(tmp_path / "runs" / f"long-{n}") for n in "ab"]
    assert {c["chosen_step"] for c in selection["candidates"].values()} == {2}
    assert set(selection["designated"]) == {"1", "4", "16"}
    # Again: nothing trained or scored twice (a finished run is skipped, written points too), same stop.
    stamps = {p: p.stat().st_mtime_ns for p in [*(tmp_path / "curves").iterdir(), *(tmp_path / "runs").glob("long-*.log")]}
    (tmp_path / "selection.json").unlink()
    again = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 3, again.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert {r: (e["status"], e["checkpointed"]) for r, e in json.loads((tmp_path / "long_runs.json").read_text()).items()} \
        == {r: (e["status"], e["checkpointed"]) for r, e in runs.items()}
    assert json.loads((tmp_path / "selection.json").read_text()) == selection


POOL_CURVE = ROOT / "benchmarks" / "fewshot" / "claim" / "pool_curve.sh"


@pytest.mark.slow  # two trainings and two evaluations, side by side
def test_the_pool_curve_trains_and_scores_both_fractions_then_repeats_nothing(tmp_path):
    env = _world(tmp_path)
    ran = subprocess.run(["bash", str(POOL_CURVE), "a"], env=env, capture_output=True, text=True, timeout=900)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "runs").glob("*.log")))
    assert ran.returncode == 0, ran.stderr + logs
    runs = json.loads((tmp_path / "long_runs.json").read_text())
    for pct, share in ((25, 0.25), (50, 0.5)):
        config = yaml.safe_load((tmp_path / "configs" / f"a_pool{pct}.yaml").read_text())
        assert (config["pool_fraction"], config["pool_seed"]) == (share, 0)
        run = tmp_path / "runs" / f"long-a_pool{pct}"
        assert runs[str(run)]["status"] == "finished" and runs[str(run)]["checkpointed"] == 2
        point = json.loads((tmp_path / "curves" / f"a_pool{pct}.step-0000002.json").read_text())
        assert point["results"], point
    # Again: both runs are finished and both points written, so nothing is trained or scored twice.
    stamps = {p: p.stat().st_mtime_ns for p in [*(tmp_path / "curves").iterdir(), *(tmp_path / "configs").iterdir()]}
    again = subprocess.run(["bash", str(POOL_CURVE), "a"], env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert {r: (e["status"], e["checkpointed"]) for r, e in json.loads((tmp_path / "long_runs.json").read_text()).items()} \
        == {r: (e["status"], e["checkpointed"]) for r, e in runs.items()}


def test_the_pool_curve_refuses_an_unknown_lane_count(tmp_path):
    env = {**_world(tmp_path), "LANES": "3"}
    ran = subprocess.run(["bash", str(POOL_CURVE), "a"], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 2 and "LANES" in ran.stderr
