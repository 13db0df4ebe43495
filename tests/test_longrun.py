"""Long runs on shared machines: a scheduler's SIGTERM, a second launch on the same folder, a full disk."""

import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from metalm.errors import MetalmError
from metalm.runtime.checkpoint import latest_checkpoint, list_checkpoints
from metalm.runtime.longrun import Interrupted, RunLock, StopSignals

from .data.fixtures import make_world
from .test_train import final_tensors, run_cli

HOLD = "import sys, time; from metalm.runtime.longrun import RunLock; l = RunLock(sys.argv[1]).__enter__(); " \
       "print('held', flush=True); time.sleep(120)"


def test_a_held_lock_is_refused_naming_its_holder_and_released_when_the_holder_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MetalmError, match=f"in use by process {holder.pid} "):
            RunLock(tmp_path).__enter__()
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own; the kernel drops the lock
        holder.wait()
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_a_run_folder_that_is_a_file_or_cannot_be_made_is_one_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(MetalmError, match="file is a file, not a folder: give a new or existing folder as the run"):
        RunLock(tmp_path / "file").__enter__()
    with pytest.raises(MetalmError, match="cannot use .*file/sub as the output path: Not a directory"):
        RunLock(tmp_path / "file" / "sub", ".out.json.lock", "output path").__enter__()


def test_the_first_signal_is_recorded_and_the_second_stops_at_once():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.requested == signal.SIGTERM
        with pytest.raises(Interrupted) as err:
            os.kill(os.getpid(), signal.SIGINT)
        assert err.value.status == 130
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(Interrupted, match="the evaluation stopped by SIGTERM: kept") as err, \
            StopSignals(immediate=True, what="the evaluation", note=": kept"):
        os.kill(os.getpid(), signal.SIGTERM)
    assert err.value.status == 143


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), outer={"lr": 0.01, "meta_batch": 2, "schedule": "cosine"},
                      max_steps=12, val_every=0, checkpoint_every=3, keep_checkpoints=2)


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    run_cli(world, run)
    return final_tensors(run)


def logged_steps(run_dir) -> int:
    log = run_dir / "log.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def same_as(reference, run_dir) -> None:
    name_a, a = reference
    name_b, b = final_tensors(run_dir)
    assert name_a == name_b
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng/"))


@pytest.mark.slow
def test_sigterm_checkpoints_the_logged_step_exits_143_and_resumes_identically(world, reference, tmp_path):
    run = tmp_path / "run"
    proc = run_cli(world, run, wait=False)
    deadline = time.time() + 120
    while logged_steps(run) < 4 and time.time() < deadline:  # step 4: between checkpoints 3 and 6
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    last = logged_steps(run)
    assert last >= 4 and f"stopped by SIGTERM after step {last}" in err and "Traceback" not in err
    assert latest_checkpoint(run).name == f"step-{last:07d}"  # no logged step is lost
    run_cli(world, run, "--resume")
    same_as(reference, run)


@pytest.mark.slow
def test_a_run_in_stages_with_until_is_the_same_run(world, reference, tmp_path):
    run = tmp_path / "run"
    run_cli(world, run, "--until", "5")  # the cosine schedule still runs to max_steps (12)
    assert latest_checkpoint(run).name == "step-0000005" and logged_steps(run) == 5
    run_cli(world, run, "--resume", "--until", "8")
    assert logged_steps(run) == 8
    run_cli(world, run, "--resume")
    same_as(reference, run)
    proc = run_cli(world, tmp_path / "other", "--until", "13", wait=False)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--until: must be in 1..max_steps (12), got 13" in err


@pytest.mark.slow
def test_a_second_launch_on_a_running_folder_is_refused(world, reference, tmp_path):
    run = tmp_path / "run"
    first = run_cli(world, run, wait=False)
    deadline = time.time() + 120
    while logged_steps(run) < 1 and time.time() < deadline:
        time.sleep(0.01)
    start = time.time()
    second = run_cli(world, run, "--resume", wait=False)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2 and time.time() - start < 30
    assert f"in use by process {first.pid}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    same_as(reference, run)


@pytest.mark.slow
def test_a_full_disk_is_one_line_keeps_the_last_checkpoint_and_resumes_identically(world, reference, tmp_path):
    run = tmp_path / "run"
    run_cli(world, run, "--until", "3")
    tensors = run / "checkpoints" / "step-0000003" / "tensors.safetensors"
    limit = tensors.stat().st_size // 2
    assert limit > 3 * (run / "log.jsonl").stat().st_size  # the log (twice as long at step 6) still fits

    def small_files():  # in the child: a file-size limit, as a full disk or a quota refuses the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "metalm.cli", "train", str(world["config"]), "--run-dir", str(run), "--quiet",
           "--resume", "--until", "6"]
    proc = subprocess.run(cmd, env=world["env"], capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("metalm: error: no room to write ") and "tensors.safetensors" in err[-1]
    assert "Traceback" not in proc.stderr
    assert [p.name for p in list_checkpoints(run)] == ["step-0000003"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000003"]  # nothing partial
    assert latest_checkpoint(run).name == "step-0000003"  # and it verifies
    run_cli(world, run, "--resume")  # to the reference's 12 steps, on the same schedule
    same_as(reference, run)


@pytest.mark.slow
def test_sigterm_stops_an_evaluation_with_its_journal_kept_and_resume_finishes_it(world, tmp_path):
    import json

    run = tmp_path / "run"
    run_cli(world, run, "--max-steps", "3")
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "metalm.cli", "eval", "--run-dir", str(run), "--tasks", "toy_cls,toy_mc,news",
           "--shots", "1,2", "--episodes", "4", "--ways", "2", "--queries", "1", "--methods", "zeroshot,icl,meta",
           "--json", str(out), "--quiet"]
    journal = tmp_path / "eval.json.partial.jsonl"
    proc = subprocess.Popen(cmd, env=world["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (journal.is_file() and '"block"' in journal.read_text()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == f"metalm: the evaluation stopped by SIGTERM: its measured blocks are in " \
                                          f"{journal}; --resume continues"
    kept = sum('"block"' in line for line in journal.read_text().splitlines())
    assert 1 <= kept < 6 and not out.exists()
    subprocess.run([*cmd, "--resume"], env=world["env"], check=True, capture_output=True, timeout=300)
    resumed = json.loads(out.read_text())
    whole = tmp_path / "whole.json"
    subprocess.run([*cmd[:-3], "--json", str(whole), "--quiet"], env=world["env"], check=True, capture_output=True,
                   timeout=300)
    assert resumed["results"] == json.loads(whole.read_text())["results"]


def test_paths_of_the_wrong_kind_and_a_broken_report_are_one_line_errors(world, tmp_path, monkeypatch, capsys):
    """A log that is a folder, checkpoints that are a file, an output that is a folder or under a file,
    an eval.json that is not a report: exit 2 and one line naming the path, before any work is lost."""
    import shutil

    from metalm.cli import main

    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    run = tmp_path / "run"
    main(["train", str(world["config"]), "--run-dir", str(run), "--quiet", "--max-steps", "1"])
    (tmp_path / "file").write_text("x")
    capsys.readouterr()

    def one_line_error(argv, *expected):
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("metalm")]
        assert len(err) == 1 and err[0].startswith("metalm: error: ") and all(e in err[0] for e in expected), err

    for target, make in (("log.jsonl", "folder"), ("checkpoints", "file")):
        bad = tmp_path / f"bad-{target}"
        shutil.copytree(run, bad)
        shutil.rmtree(bad / target) if (bad / target).is_dir() else (bad / target).unlink()
        (bad / target).mkdir() if make == "folder" else (bad / target).write_text("x")
        one_line_error(["train", str(world["config"]), "--run-dir", str(bad), "--quiet", "--resume"], target)
    small = ["--tasks", "toy_cls", "--episodes", "1", "--methods", "zeroshot", "--shots", "1", "--ways", "2",
             "--queries", "1", "--quiet"]
    one_line_error(["eval", "--run-dir", str(run), *small, "--json", str(tmp_path)], "--json", "is a folder")
    one_line_error(["eval", "--run-dir", str(run), *small, "--json", str(tmp_path / "file" / "e.json")], "file")
    one_line_error(["export", str(run), str(tmp_path / "file")], "file")
    for body, expected in (("{", "JSONDecodeError"), ("[1]", "a list, not an object"),
                           ('{"macro": [], "results": []}', "'macro' is not a non-empty list"),
                           ('{"macro": [{"method": "m", "shots": 1, "accuracy": NaN, "ci95": 0}], "results": []}',
                            "accuracy nan is not a finite number")):
        (run / "eval.json").write_text(body)
        one_line_error(["report", str(run)], "eval.json", expected)
