"""A long run's state committed to the repository survives a new machine: resumed from the committed
folder alone, a run continues exactly as if it had never stopped."""

import json

import pytest
import torch
from safetensors.torch import load_file

from metalm.errors import MetalmError
from metalm.runtime.checkpoint import list_checkpoints
from metalm.runtime.runstate import MAX_BYTES, commit_state, committed_step, restore_state
from metalm.train import MetaTrainer, load_train_config

from .data.fixtures import make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), outer={"lr": 0.01, "meta_batch": 2}, max_steps=4,
                      val_every=0, checkpoint_every=1, keep_checkpoints=2)


def trainer(world, run_dir, monkeypatch):
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    return MetaTrainer(load_train_config(world["config"]), run_dir)


def tensors(path):
    return {k: v.clone() for k, v in load_file(str(path / "tensors.safetensors")).items()}


def test_a_run_resumed_from_its_committed_state_alone_is_the_uninterrupted_run(world, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    trainer(world, reference, monkeypatch).train(progress=False)
    first = tmp_path / "machine-one" / "runs" / "long"
    trainer(world, first, monkeypatch).train(progress=False, max_steps=2)  # a stage: stopped at step 2
    state = tmp_path / "repo" / "benchmarks" / "runs" / "long"
    assert commit_state(first, state) == 2 and committed_step(state) == 2
    assert [p.name for p in list_checkpoints(state)] == ["step-0000002"]  # the newest only
    size = sum(p.stat().st_size for p in state.rglob("*") if p.is_file())
    assert size < MAX_BYTES and not any("model" in p.name for p in state.rglob("*"))  # no base model
    # A new machine: only the repository's folder; no runs/.
    fresh = tmp_path / "machine-two" / "runs" / "long"
    assert restore_state(state, fresh) == 2
    trainer(world, fresh, monkeypatch).train(resume=True, progress=False)
    got, want = tensors(fresh / "checkpoints" / "step-0000004"), tensors(reference / "checkpoints" / "step-0000004")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    drop = lambda line: {k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
    assert [drop(x) for x in (fresh / "log.jsonl").read_text().splitlines()] == \
        [drop(x) for x in (reference / "log.jsonl").read_text().splitlines()]
    # A local folder already ahead of the committed state is kept as it is.
    assert restore_state(state, reference) == 4 and committed_step(state) == 2


def test_a_state_over_the_bound_is_refused_and_the_committed_one_kept(world, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer(world, run, monkeypatch).train(progress=False, max_steps=1)
    state = tmp_path / "state"
    commit_state(run, state)
    before = {p.relative_to(state): p.read_bytes() for p in state.rglob("*") if p.is_file()}
    with pytest.raises(MetalmError, match=r"MiB of state is over the 0 MiB a committed run may hold"):
        commit_state(run, state, max_bytes=1000)
    assert {p.relative_to(state): p.read_bytes() for p in state.rglob("*") if p.is_file()} == before
    with pytest.raises(MetalmError, match="has no checkpoint to commit"):
        commit_state(tmp_path / "empty", tmp_path / "state2")


def test_the_committed_state_folder_is_not_ignored_by_git():
    """benchmarks/runs/NAME must be committable (a pattern `runs/` would ignore it with the local runs/)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ignored = subprocess.run(["git", "check-ignore", "-q", "benchmarks/runs/long-x/checkpoints/step-0000001/state.json"],
                             cwd=root, capture_output=True)
    local = subprocess.run(["git", "check-ignore", "-q", "runs/long-x/log.jsonl"], cwd=root, capture_output=True)
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.returncode == 1 and local.returncode == 0


def test_a_kept_checkpoint_stays_through_later_commits_and_is_laid_in_on_a_new_machine(world, tmp_path, monkeypatch):
    """keep_checkpoint: a study's chosen older step stays in the committed state while the run trains on and
    is committed again, and a fresh folder gets it back byte for byte beside the newest (which resume reads)."""
    from metalm.runtime.runstate import keep_checkpoint, kept_checkpoints

    run = tmp_path / "machine-one" / "runs" / "long"
    trainer(world, run, monkeypatch).train(progress=False, max_steps=2)
    state = tmp_path / "repo" / "runs" / "long"
    with pytest.raises(MetalmError, match="holds no committed state"):
        keep_checkpoint(run, state, 1)
    commit_state(run, state)
    chosen = tensors(run / "checkpoints" / "step-0000001")
    keep_checkpoint(run, state, 1)
    with pytest.raises(MetalmError, match="no such checkpoint to keep"):
        keep_checkpoint(run, state, 3)
    trainer(world, run, monkeypatch).train(resume=True, progress=False)  # on to step 4: step 1 pruned locally
    assert not (run / "checkpoints" / "step-0000001").exists()
    assert commit_state(run, state) == 4
    assert [p.name for p in list_checkpoints(state)] == ["step-0000001", "step-0000004"]
    assert [p.name for p in kept_checkpoints(state)] == ["step-0000001"]
    fresh = tmp_path / "machine-two" / "runs" / "long"
    assert restore_state(state, fresh) == 4  # the newest is what resume reads
    got = tensors(fresh / "checkpoints" / "step-0000001")  # weights only: scored, never resumed
    scored = {k: v for k, v in chosen.items() if not k.startswith("opt/")}
    assert len(scored) < len(chosen) and got.keys() == scored.keys()
    assert all(torch.equal(got[k], scored[k]) for k in scored)
    with pytest.raises(MetalmError, match="over the 0 MiB"):
        commit_state(run, state, max_bytes=1000)  # the kept one counts toward the bound


def test_a_finished_run_whose_kept_step_is_its_newest_restores_on_a_new_machine(world, tmp_path, monkeypatch):
    """A learning curve that chose a run's last step keeps the newest checkpoint: restoring that state into
    an empty folder lays it in once (it was copied twice and the second copy failed, on a new machine)."""
    from metalm.runtime.runstate import keep_checkpoint, kept_checkpoints

    run = tmp_path / "machine-one" / "runs" / "long"
    trainer(world, run, monkeypatch).train(progress=False, max_steps=2)
    state = tmp_path / "repo" / "runs" / "long"
    commit_state(run, state)
    keep_checkpoint(run, state, 2)
    assert [p.name for p in kept_checkpoints(state)] == [p.name for p in list_checkpoints(state)] == ["step-0000002"]
    want = tensors(run / "checkpoints" / "step-0000002")
    fresh = tmp_path / "machine-two" / "runs" / "long"
    assert restore_state(state, fresh) == 2
    assert restore_state(state, fresh) == 2  # again: the folder is as new, nothing is copied
    got = tensors(fresh / "checkpoints" / "step-0000002")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert [p.name for p in list_checkpoints(fresh)] == ["step-0000002"]


def test_a_finished_runs_committed_state_is_weights_only_and_scores_as_the_run_does(world, tmp_path, monkeypatch):
    """commit_state(weights_only=True), as long_runs.py does for a finished run: the optimizer's tensors are
    dropped (the file shrinks, checksums still verify), a new machine's folder scores with the same trained
    values as the run's own, and resuming it is refused with a clear error instead of a silently fresh optimizer."""
    from metalm.run import load_run

    run = tmp_path / "machine-one" / "runs" / "long"
    trainer(world, run, monkeypatch).train(progress=False)  # the whole schedule: 4 steps
    state = tmp_path / "repo" / "runs" / "long"
    full = (run / "checkpoints" / "step-0000004" / "tensors.safetensors").stat().st_size
    assert commit_state(run, state, weights_only=True) == 4
    slim = state / "checkpoints" / "step-0000004"
    assert slim.joinpath("tensors.safetensors").stat().st_size < full
    assert not any(k.startswith("opt/") for k in tensors(slim))
    assert json.loads(slim.joinpath("state.json").read_text())["weights_only"] is True
    fresh = tmp_path / "machine-two" / "runs" / "long"
    assert restore_state(state, fresh) == 4
    mine, theirs = load_run(run).trained, load_run(fresh).trained
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    with pytest.raises(MetalmError, match="holds weights only"):
        trainer(world, fresh, monkeypatch).train(resume=True, progress=False)


def test_a_kept_step_committed_as_the_newest_is_weights_only_once_the_run_goes_on(world, tmp_path, monkeypatch):
    """A curve step kept while it was the newest (the run stopped at it) holds the optimizer's state; when
    the run goes on and is committed again, the kept copy is made weights only (scored, never resumed),
    with the same trained values; a copy already weights only is left as it is."""
    from metalm.runtime.runstate import keep_checkpoint

    run = tmp_path / "machine-one" / "runs" / "long"
    trainer(world, run, monkeypatch).train(progress=False, max_steps=2)
    state = tmp_path / "repo" / "runs" / "long"
    commit_state(run, state)
    keep_checkpoint(run, state, 2)
    full = tensors(state / "checkpoints" / "step-0000002")
    assert any(k.startswith("opt/") for k in full)  # the newest resumes: its optimizer's state stays
    trainer(world, run, monkeypatch).train(resume=True, progress=False, max_steps=3)
    assert commit_state(run, state) == 3
    kept = state / "checkpoints" / "step-0000002"
    slim = tensors(kept)
    assert json.loads((kept / "state.json").read_text())["weights_only"]
    assert slim.keys() == {k for k in full if not k.startswith("opt/")}
    assert all(torch.equal(slim[k], full[k]) for k in slim)
    before = (kept / "tensors.safetensors").stat().st_mtime_ns
    assert commit_state(run, state) == 3
    # copied as it is (copytree keeps the time), not rewritten
    assert (state / "checkpoints" / "step-0000002" / "tensors.safetensors").stat().st_mtime_ns == before
    assert any(k.startswith("opt/") for k in tensors(state / "checkpoints" / "step-0000003"))  # the newest resumes


def test_the_bound_is_on_what_is_committed_so_a_finished_run_over_it_with_its_optimizer_fits_weights_only(
        world, tmp_path, monkeypatch):
    """The claim study's LoRA library (one LoRA per meta-train task) weighed 44.6 MiB with Adam's moments and
    15 weights only; the bound was checked on the full checkpoint, so its finished run was refused and never
    committed. The bound reads what would be committed: a finished run's newest and the kept copies without
    the optimizer. A state over it still leaves the committed one as it was and names the optimizer's share."""
    from metalm.runtime.runstate import keep_checkpoint

    run = tmp_path / "run"
    trainer(world, run, monkeypatch).train(progress=False)  # the whole schedule: 4 steps
    probe = tmp_path / "probe"
    commit_state(run, probe, weights_only=True)
    slim = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file())
    full = slim + sum(v.nbytes for k, v in tensors(run / "checkpoints" / "step-0000004").items() if k.startswith("opt/"))
    assert full > slim + 1000  # Adam's moments
    bound = slim + 500  # over with the optimizer's state, within weights only
    state = tmp_path / "state"
    with pytest.raises(MetalmError, match=r"over the .* MiB a committed run may hold \([1-9]\d% of its tensors the opt"):
        commit_state(run, state, max_bytes=bound, part_bytes=1000)  # the share read before the file is split
    assert not state.exists() and not list(tmp_path.glob(".state-*"))  # nothing left behind
    assert commit_state(run, state, max_bytes=bound, weights_only=True) == 4
    # a kept older step is counted weights only too (the copy that is committed), with the state beside it
    with pytest.raises(MetalmError, match="with it is over the"):
        keep_checkpoint(run, state, 3, max_bytes=slim + 500)
    assert [p.name for p in (state / "checkpoints").iterdir()] == ["step-0000004"]  # no copy left behind
    keep_checkpoint(run, state, 3, max_bytes=2 * slim + 500)  # over it with the optimizer's state
    assert sorted(p.name for p in (state / "checkpoints").iterdir()) == ["step-0000003", "step-0000004"]


def test_a_state_with_a_tensor_file_over_the_part_size_is_committed_in_parts_and_laid_in_whole(
        world, tmp_path, monkeypatch):
    """The LoRA library's weights are 15.9 MB in one file; a committed file stays under PART_BYTES (4 MiB):
    bigger ones are split, and a new machine's folder gets the file back byte for byte, so resuming it is
    the uninterrupted run. Kept copies stay in parts through later commits."""
    from metalm.runtime.runstate import PART_BYTES, keep_checkpoint, kept_checkpoints

    assert PART_BYTES <= 5 * 10**6  # under the repository's largest file
    reference = tmp_path / "reference"
    trainer(world, reference, monkeypatch).train(progress=False)
    run = tmp_path / "machine-one" / "runs" / "long"
    trainer(world, run, monkeypatch).train(progress=False, max_steps=2)
    state = tmp_path / "repo" / "runs" / "long"
    part = 1000
    assert commit_state(run, state, part_bytes=part) == 2
    keep_checkpoint(run, state, 1, part_bytes=part)
    trainer(world, run, monkeypatch).train(progress=False, resume=True, max_steps=3)
    assert commit_state(run, state, part_bytes=part) == 3  # the kept copy (in parts) goes through again
    with pytest.raises(MetalmError, match="part_bytes must be a positive number"):
        commit_state(run, state, part_bytes=0)  # not a folder of empty parts
    assert committed_step(state) == 3
    assert max(p.stat().st_size for p in state.rglob("tensors.safetensors*")) <= part
    assert not list(state.rglob("tensors.safetensors")) and len(list(state.rglob("*.part-*"))) > 4
    assert committed_step(state) == 3 and [p.name for p in kept_checkpoints(state)] == ["step-0000001"]
    fresh = tmp_path / "machine-two" / "runs" / "long"
    assert restore_state(state, fresh) == 3
    assert sorted(p.name for p in list_checkpoints(fresh)) == ["step-0000001", "step-0000003"]
    want = (run / "checkpoints" / "step-0000003" / "tensors.safetensors").read_bytes()
    assert (fresh / "checkpoints" / "step-0000003" / "tensors.safetensors").read_bytes() == want
    assert not list(fresh.rglob("*.part-*"))
    trainer(world, fresh, monkeypatch).train(resume=True, progress=False)
    got, ref = tensors(fresh / "checkpoints" / "step-0000004"), tensors(reference / "checkpoints" / "step-0000004")
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
