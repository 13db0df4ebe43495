"""Writes that survive: a kill while a resumed evaluation rewrites its journal loses no block, and a
full disk (ENOSPC, injected at the write call) on a checkpoint, the training log and an evaluation's
journal is one line, exit 2, with the previous file intact."""

import errno
import json

import pytest

import metalm.runtime.checkpoint as checkpoint_mod
from metalm.cli import main
from metalm.eval.journal import Journal
from metalm.runtime.checkpoint import latest_checkpoint, list_checkpoints
from metalm.runtime.files import write_atomic

from .data.fixtures import make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), outer={"lr": 0.01, "meta_batch": 2}, max_steps=4,
                      val_every=0, checkpoint_every=1, keep_checkpoints=4)


def enospc(path="") -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", path or None)


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def test_a_kill_while_a_resumed_journal_is_rewritten_loses_no_block(tmp_path, monkeypatch):
    path = tmp_path / "eval.json.partial.jsonl"
    book = Journal(path, {"eval": 1}, resume=False)
    book.put("a/4/0", {"icl": [0.5, 1.0]}, 3.0)
    book.put("b/4/0", {"icl": [0.0]}, 2.0)
    before = path.read_bytes() + b'{"block": "c/4/0", "ro'  # and a line torn by the kill of the first session
    path.write_bytes(before)

    def killed(fd):  # the process dies while the rewrite's new file is flushed, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr("os.fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        Journal(path, {"eval": 1}, resume=True)
    monkeypatch.undo()
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))  # untouched, no temporary left
    again = Journal(path, {"eval": 1}, resume=True)
    assert set(again.blocks) == {"a/4/0", "b/4/0"} and again.seconds == 5.0


def test_write_atomic_keeps_the_old_file_when_the_disk_is_full(tmp_path, monkeypatch):
    path = tmp_path / "eval.json"
    path.write_text('{"old": 1}')

    def full(fd):
        raise enospc()

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(OSError) as err:
        write_atomic(path, '{"new": 2}')
    assert err.value.errno == errno.ENOSPC and path.read_text() == '{"old": 1}' and len(list(tmp_path.iterdir())) == 1


def test_enospc_on_a_checkpoint_is_one_line_and_keeps_the_previous_one(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    run = tmp_path / "run"
    assert main(["train", str(world["config"]), "--run-dir", str(run), "--quiet", "--until", "2"]) == 0
    original = checkpoint_mod._write_synced

    def full(path, data):
        if path.name == "tensors.safetensors":
            raise enospc(str(path))
        return original(path, data)

    monkeypatch.setattr(checkpoint_mod, "_write_synced", full)
    capsys.readouterr()
    assert main(["train", str(world["config"]), "--run-dir", str(run), "--quiet", "--resume"]) == 2
    line = one_line(capsys)
    assert line.startswith("metalm: error: no room to write ") and "tensors.safetensors" in line
    assert "No space left on device" in line
    assert [p.name for p in list_checkpoints(run)] == ["step-0000001", "step-0000002"]
    assert latest_checkpoint(run).name == "step-0000002"  # intact: it verifies
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]


def test_enospc_on_the_training_log_is_one_line_and_keeps_its_lines(world, tmp_path, monkeypatch, capsys):
    from metalm.train import MetaTrainer

    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    run = tmp_path / "run"
    assert main(["train", str(world["config"]), "--run-dir", str(run), "--quiet", "--until", "2"]) == 0
    before = (run / "log.jsonl").read_text()
    original = MetaTrainer._log

    class Full:
        def write(self, text):
            raise enospc()

        def flush(self):
            pass

    monkeypatch.setattr(MetaTrainer, "_log", lambda self, row, log, path, writer: original(self, row, Full(), path,
                                                                                             writer))
    capsys.readouterr()
    assert main(["train", str(world["config"]), "--run-dir", str(run), "--quiet", "--resume"]) == 2
    line = one_line(capsys)
    assert line.startswith(f"metalm: error: no room to write {run / 'log.jsonl'}: No space left on device")
    assert (run / "log.jsonl").read_text() == before


def test_enospc_on_an_evaluation_journal_is_one_line_and_keeps_its_blocks(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    run = tmp_path / "run"
    assert main(["train", str(world["config"]), "--run-dir", str(run), "--quiet", "--until", "1"]) == 0
    out = tmp_path / "eval.json"
    journal = tmp_path / "eval.json.partial.jsonl"
    cmd = ["eval", "--run-dir", str(run), "--tasks", "toy_cls,toy_mc", "--shots", "1", "--episodes", "2", "--ways", "2",
           "--queries", "1", "--methods", "zeroshot,icl", "--json", str(out), "--quiet"]
    original = Journal._append
    appended = []

    def full_after_one(self, line):
        if "block" in line and appended:
            raise enospc(str(self.path))
        original(self, line)
        appended.append(line)

    monkeypatch.setattr(Journal, "_append", full_after_one)
    capsys.readouterr()
    assert main(cmd) == 2
    line = one_line(capsys)
    assert line.startswith(f"metalm: error: no room to write {journal}: No space left on device")
    kept = [json.loads(x) for x in journal.read_text().splitlines()]
    assert [x.get("block") for x in kept if "block" in x] == [appended[0]["block"]] and not out.exists()
    monkeypatch.setattr(Journal, "_append", original)
    assert main([*cmd, "--resume"]) == 0 and json.loads(out.read_text())["results"]
