"""benchmarks/fewshot/train_long.sh and the manifest it keeps (benchmarks/fewshot/long_runs.py): a run
stopped by --until, finished, and pre-empted by SIGTERM is recorded as such, with the step it reached."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .data.fixtures import make_world

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fewshot" / "train_long.sh"
MANIFEST = """# Long jobs

hand-written rows stay as they are

<!-- long runs: begin (benchmarks/fewshot/long_runs.py writes this table) -->
<!-- long runs: end -->

## after the table
"""


@pytest.fixture
def setup(tmp_path):
    world = make_world(tmp_path, max_steps=3, val_every=0, checkpoint_every=1)
    (tmp_path / "MANIFEST.md").write_text(MANIFEST)
    env = {**world["env"], "BIN": str(Path(sys.executable).parent), "RUN": str(tmp_path / "run"),
           "LONG_RUNS_JSON": str(tmp_path / "long_runs.json"), "LONG_RUNS_MANIFEST": str(tmp_path / "MANIFEST.md"),
           "LONG_RUNS_STATE": str(tmp_path / "committed")}
    return world, env, tmp_path


def entry(tmp_path):
    runs = json.loads((tmp_path / "long_runs.json").read_text())
    assert list(runs) == [str(tmp_path / "run")]  # outside the repository: its own path
    return runs[str(tmp_path / "run")]


@pytest.mark.slow  # two trainings and four manifest updates, each a process of its own
def test_until_then_to_the_end(setup):
    world, env, tmp_path = setup
    ran = subprocess.run(["bash", str(SCRIPT), str(world["config"]), "--until", "1"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    e = entry(tmp_path)
    assert (e["status"], e["checkpointed"], e["max_steps"], e["algorithm"]) == ("stopped", 1, 3, "maml")
    assert e["committed"] == 1 and (tmp_path / "committed" / "run" / "checkpoints" / "step-0000001").is_dir()
    assert e["config"] == str(world["config"])
    ran = subprocess.run(["bash", str(SCRIPT), str(world["config"])], env=env, capture_output=True, text=True,
                         timeout=600)
    assert ran.returncode == 0, ran.stderr
    e = entry(tmp_path)
    assert (e["status"], e["checkpointed"], e["logged"], e["committed"]) == ("finished", 3, 3, 3)
    weights_only = [json.loads((p / "state.json").read_text()).get("weights_only") for p in
                    sorted((tmp_path / "committed" / "run" / "checkpoints").iterdir())]
    assert weights_only == [True]  # a stopped run's state resumes; a finished one's is scored only
    text = (tmp_path / "MANIFEST.md").read_text()
    assert text.startswith("# Long jobs\n\nhand-written rows stay as they are\n") and text.endswith("## after the table\n")
    rows = [line for line in text.splitlines() if line.startswith(f"| `{tmp_path / 'run'}`")]
    assert len(rows) == 1 and "| maml | 3 / 3 | step 3 | finished |" in rows[0]


@pytest.mark.slow
def test_sigterm_is_recorded_as_stopped_at_its_checkpoint(setup):
    world, env, tmp_path = setup
    config = world["config"].read_text().replace("max_steps: 3", "max_steps: 100000")
    world["config"].write_text(config)
    proc = subprocess.Popen(["bash", str(SCRIPT), str(world["config"])], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.2)
    assert log.is_file(), proc.stderr.read() if proc.poll() is not None else "no step logged in 300 s"
    assert entry(tmp_path)["status"] == "running"
    os.kill(proc.pid, signal.SIGTERM)  # to the script: it passes the signal on and records the outcome
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    e = entry(tmp_path)
    assert e["status"] == "stopped" and e["checkpointed"] == e["logged"] == e["committed"] >= 2  # nothing lost


def test_a_second_launch_leaves_the_running_entry(setup):
    """A launch on a folder in use is refused before it touches the manifest."""
    world, env, tmp_path = setup
    import fcntl

    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / ".lock", "w") as fh:
        fh.write("4242\n")
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        ran = subprocess.run(["bash", str(SCRIPT), str(world["config"])], env=env, capture_output=True, text=True,
                             timeout=600)
    assert ran.returncode == 2 and "in use by process 4242" in ran.stderr
    assert not (tmp_path / "long_runs.json").exists()


def test_status_from_the_exit_code():
    sys.path.insert(0, str(ROOT / "benchmarks" / "fewshot"))
    try:
        from long_runs import status_of
    finally:
        sys.path.pop(0)
    at = {"checkpointed": 5, "max_steps": 5}
    before = {"checkpointed": 3, "max_steps": 5}
    assert status_of(at, 0, None) == "finished" and status_of(before, 0, None) == "stopped"  # --until
    assert status_of(before, 143, None) == "stopped" and status_of(before, 130, None) == "stopped"
    assert status_of(before, 2, None) == "failed (2)" and status_of(before, 1, None) == "failed (1)"
    assert status_of(before, None, "running") == "running"


def test_a_lost_run_keeps_the_step_it_had_reached(tmp_path):
    """A run folder gone with its machine: marked lost by hand, its entry keeps its figures."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "fewshot"))
    try:
        from long_runs import update
    finally:
        sys.path.pop(0)
    path, manifest = tmp_path / "long_runs.json", tmp_path / "MANIFEST.md"
    manifest.write_text(MANIFEST)
    run = tmp_path / "run"
    before = {"algorithm": "hyperlora", "max_steps": 2000, "checkpointed": 1117, "logged": 1117, "config": "c.yaml",
              "status": "stopped", "updated": "then"}
    path.write_text(json.dumps({str(run): before}))
    e = update(run, status="lost", path=path, manifest=manifest, state=tmp_path / "committed", now="now")
    assert e == {**before, "status": "lost", "updated": "now", "committed": None}
    assert "| hyperlora | 1117 / 2000 | none | lost | now | from step 0: `bash benchmarks/fewshot/train_long.sh " \
        "c.yaml` |" in manifest.read_text()
    run.mkdir()
    with pytest.raises(SystemExit, match="still there"):
        update(run, status="lost", path=path, manifest=manifest, state=tmp_path / "committed")
    with pytest.raises(SystemExit, match="nothing to mark lost"):
        update(tmp_path / "other", status="lost", path=path, manifest=manifest, state=tmp_path / "committed")
    assert json.loads(path.read_text()) == {str(run): e}  # the refused calls changed nothing
    # A run never to be resumed (its split is gone): the record stays, without a command to resume it.
    e = update(run, status="abandoned", path=path, manifest=manifest, state=tmp_path / "committed", now="later")
    assert e["status"] == "abandoned" and e["checkpointed"] == 1117
    assert "| hyperlora | 1117 / 2000 | none | abandoned | later |  |" in manifest.read_text()


def _update_at_once(barrier, run, config, path, manifest, state):
    sys.path.insert(0, str(ROOT / "benchmarks" / "fewshot"))
    from long_runs import update

    barrier.wait()
    update(run, config=config, path=path, manifest=manifest, state=state, now="now")


def test_lanes_updating_the_manifest_at_once_lose_no_entry(setup):
    """Lanes side by side (study.sh, pool_curve.sh) can end at the same moment: every update is kept, in
    the JSON and in the table, and no writer trips over another's temporary file (seen: two lanes that
    shared one temporary name, one of them failed)."""
    import multiprocessing

    world, _, tmp_path = setup
    path, manifest = tmp_path / "long_runs.json", tmp_path / "MANIFEST.md"
    runs = [tmp_path / f"run{k}" for k in range(8)]
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(runs))
    procs = [ctx.Process(target=_update_at_once, args=(barrier, r, str(world["config"]), path, manifest,
                                                                   tmp_path / "committed"))
             for r in runs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * len(runs)
    assert sorted(json.loads(path.read_text())) == sorted(str(r) for r in runs)
    table = manifest.read_text().split("<!-- long runs: begin")[1].split("<!-- long runs: end")[0]
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 1 + len(runs)  # a row each
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_a_fresh_clone_continues_from_the_committed_state(setup):
    """The run folder is gone (a new machine); train_long.sh lays the committed state in and continues."""
    import shutil

    world, env, tmp_path = setup
    ran = subprocess.run(["bash", str(SCRIPT), str(world["config"]), "--until", "2"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert ran.returncode == 0 and entry(tmp_path)["committed"] == 2, ran.stderr
    shutil.rmtree(tmp_path / "run")
    ran = subprocess.run(["bash", str(SCRIPT), str(world["config"])], env=env, capture_output=True, text=True,
                         timeout=600)
    assert ran.returncode == 0 and "resumes from step 2" in ran.stderr, ran.stderr
    log = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3] and entry(tmp_path)["committed"] == 3


@pytest.mark.slow  # two trainings, each a process of its own
def test_a_run_stopped_past_a_curve_step_keeps_it_for_a_new_machine(setup):
    """KEEP_STEPS (a learning curve's points): a run stopped past a point commits that point's checkpoint
    beside its newest, so a fresh clone can score it and resume; reached later, the newest is kept too."""
    import shutil

    world, env, tmp_path = setup
    env = {**env, "KEEP_STEPS": "1 3"}
    ran = subprocess.run(["bash", str(SCRIPT), str(world["config"]), "--until", "2"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    e = entry(tmp_path)
    assert (e["status"], e["committed"], e["kept"]) == ("stopped", 2, [1]) and "unkept" not in e
    assert "| step 2 (and kept: 1) | stopped |" in (tmp_path / "MANIFEST.md").read_text()
    shutil.rmtree(tmp_path / "run")  # a new machine: only the committed state
    ran = subprocess.run(["bash", str(SCRIPT), str(world["config"])], env=env, capture_output=True, text=True,
                         timeout=600)
    assert ran.returncode == 0 and "resumes from step 2" in ran.stderr, ran.stderr
    assert (tmp_path / "run" / "checkpoints" / "step-0000001").is_dir()  # laid in: the curve can score it
    e = entry(tmp_path)
    assert (e["status"], e["committed"], e["kept"]) == ("finished", 3, [1, 3])
    committed = tmp_path / "committed" / "run" / "checkpoints"
    assert sorted(p.name for p in committed.iterdir()) == ["step-0000001", "step-0000003"]


@pytest.mark.slow  # two trainings, each a process of its own
def test_a_state_that_was_not_committed_fails_the_script(setup):
    """A run that trained to its end but whose state could not be committed (here: the state's folder is
    a file) exits non-zero, so a study stops on it instead of scoring a run a new machine would lose; the
    same command, once the cause is gone, commits it without training again."""
    world, env, tmp_path = setup
    (tmp_path / "blocked").write_text("not a folder")
    ran = subprocess.run(["bash", str(SCRIPT), str(world["config"])], env={**env, "LONG_RUNS_STATE": str(
        tmp_path / "blocked")}, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 4 and "state was not committed" in ran.stderr, ran.stderr
    assert (tmp_path / "run" / "checkpoints" / "step-0000003").is_dir()  # the run folder is untouched
    ran = subprocess.run(["bash", str(SCRIPT), str(world["config"])], env=env, capture_output=True, text=True,
                         timeout=600)
    assert ran.returncode == 0, ran.stderr
    log = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]  # not trained again
    e = entry(tmp_path)
    assert (e["status"], e["committed"]) == ("finished", 3)


def test_a_reached_curve_step_whose_checkpoint_is_gone_is_listed_as_unkept(tmp_path, monkeypatch):
    """A point the run passed whose checkpoint was pruned on this machine before the stop (keep_checkpoints
    too small): the commit goes on, and the entry and the manifest say which point cannot be scored."""
    from metalm.train import MetaTrainer, load_train_config

    sys.path.insert(0, str(ROOT / "benchmarks" / "fewshot"))
    try:
        from long_runs import update
    finally:
        sys.path.pop(0)
    world = make_world(tmp_path, max_steps=3, val_every=0, checkpoint_every=1, keep_checkpoints=1)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    run, state, path, manifest = tmp_path / "run", tmp_path / "committed", tmp_path / "long_runs.json", \
        tmp_path / "MANIFEST.md"
    manifest.write_text(MANIFEST)
    MetaTrainer(load_train_config(world["config"]), run).train(progress=False, max_steps=2)  # step 1 pruned
    e = update(run, exit_code=0, keep_steps=[1, 2, 3], path=path, manifest=manifest, state=state, now="now")
    assert (e["status"], e["committed"], e["kept"], e["unkept"]) == ("stopped", 2, [2], [1])  # 3: not reached
    assert "| step 2 (and kept: 2) (curve steps lost: 1) | stopped |" in manifest.read_text()
    e = update(run, status="running", path=path, manifest=manifest, state=state)
    assert e["unkept"] == [1]  # the loss stays on record


# Scripts that run for hours in the background: bash reads a plain script as it executes it, so an edit
# made while one runs changes what the running process does next; a body wrapped in one function is read
# whole before it starts.
LONG_SCRIPTS = ["benchmarks/fewshot/train_long.sh", "benchmarks/fewshot/eval.sh", "benchmarks/fewshot/bench_baselines.sh",
                "benchmarks/fewshot/claim/study.sh",
                "benchmarks/fewshot/claim/curves.sh", "benchmarks/fewshot/claim/compare.sh",
                "benchmarks/fewshot/claim/pool_curve.sh"]


@pytest.mark.parametrize("script", LONG_SCRIPTS)
def test_long_running_scripts_are_read_whole_before_they_run(script):
    lines = (ROOT / script).read_text().splitlines()
    assert lines[-1] == 'main "$@"; exit', script
    assert lines.count("main() {") == 1 and lines[-2] == "}", script


@pytest.mark.parametrize("wrapped", [True, False])
def test_an_edit_during_a_run_reaches_only_an_unwrapped_script(tmp_path, wrapped):
    """The idiom the test above checks, against a plain script: the same edit, made while each sleeps."""
    body = "sleep 1\necho first\n"
    script = tmp_path / "s.sh"
    script.write_text(f"main() {{\n{body}}}\nmain \"$@\"; exit\n" if wrapped else body)
    proc = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    with open(script, "a") as f:  # in place: the same inode, as an editor saving over it
        f.write("echo edited\n")
    out, _ = proc.communicate(timeout=30)
    assert ("edited" in out) is not wrapped and "first" in out
