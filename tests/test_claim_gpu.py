"""benchmarks/fewshot/claim/gpu.sh, the claim study's one-call GPU training, at a tiny size on a CPU: every
config trained through train_long.sh, its curve points scored, and everything packed into one archive
that lays the committed state and the curves back in (issue 44, deliverable 6)."""

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from metalm.runtime.runstate import restore_state

from .data.fixtures import make_world

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fewshot" / "claim" / "gpu.sh"


@pytest.mark.slow  # two trainings and two evaluations, each a process of its own
def test_one_call_trains_scores_and_packs(tmp_path):
    world = make_world(tmp_path, max_steps=2, val_every=0, checkpoint_every=1)
    second = tmp_path / "second.yaml"  # a second candidate: another algorithm of the same world
    config = yaml.safe_load(world["config"].read_text())
    second.write_text(yaml.safe_dump({**config, "algorithm": {"name": "reptile", "inner": {"steps": 2, "lr": 0.3}}}))
    protocol = tmp_path / "tasks" / "protocols" / "tiny.yaml"
    protocol.parent.mkdir(parents=True, exist_ok=True)
    protocol.write_text(yaml.safe_dump({"split": "toy", "evaluate_on": "meta_test", "shots": [2], "episodes": 1,
                                        "ways": 2, "queries": 1, "max_length": 64}))
    out = tmp_path / "out"
    env = {**world["env"], "OUT": str(out), "CONFIGS": f"{world['config']} {second}", "BIN": str(Path(sys.executable).parent),
           "RUNS_DIR": str(tmp_path / "runs"), "LONG_RUNS_JSON": str(tmp_path / "long_runs.json"),
           "LONG_RUNS_MANIFEST": str(tmp_path / "MANIFEST.md"), "LONG_RUNS_STATE": str(tmp_path / "committed"),
           "CURVES": str(tmp_path / "curves"), "CURVE_STEPS": "2", "TRAIN_ARGS": "device=cpu", "THREADS": "1",
           "PROTOCOL": str(protocol), "FT": "finetune_steps=[1] finetune_lrs=[0.3]",
           "CURVE_ARGS": "--evaluate-on meta_test --shots 2", "SIZING": "none", "FINALS": "0"}
    ran = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    log = (out / "claim_gpu.log").read_text() if (out / "claim_gpu.log").is_file() else ""
    assert ran.returncode == 0, ran.stderr + log
    assert log.startswith("device: cpu\n") and "config: trained in" in log and "second: trained in" in log, log
    assert "failed" not in log, log
    with tarfile.open(out / "claim_gpu.tar") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "back", filter="data")
    back = tmp_path / "back" / str(tmp_path).lstrip("/")
    for name in ("config", "second"):
        assert f"{str(tmp_path / 'curves').lstrip('/')}/{name}.step-0000002.json" in names, names
        # The archive's state is a committed state: it lays into an empty run folder at the schedule's end.
        assert restore_state(back / "committed" / f"long-{name}", tmp_path / "fresh" / name) == 2
    assert (back / "long_runs.json").is_file()
