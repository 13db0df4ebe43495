"""Checkpoints that prove themselves, the non-finite guard, and a log trimmed on every restart."""

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import metalm
from metalm.errors import MetalmError, NonFiniteError
from metalm.runtime.checkpoint import CheckpointWarning, latest_checkpoint, list_checkpoints, save_checkpoint
from metalm.train import MetaTrainer, load_train_config

from .conftest import episodes, make_model
from .data.fixtures import make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), outer={"lr": 0.01, "meta_batch": 2}, max_steps=6,
                      val_every=0, checkpoint_every=3, keep_checkpoints=3)


def train(world, run_dir, monkeypatch, resume=False, **overrides):
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    trainer = MetaTrainer(load_train_config(world["config"], overrides), run_dir)
    trainer.train(resume=resume, progress=False)
    return trainer


def tensors_of(path):
    return {k: v.clone() for k, v in load_file(str(path / "tensors.safetensors")).items()}  # not a view of the file


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng/"))


def steps_logged(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


def flip_bit(path, offset_from_end=64):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped bit", "truncated", "empty state", "negative step"])
def test_a_corrupt_checkpoint_is_named_and_resume_uses_the_previous_one(world, tmp_path, monkeypatch, damage):
    run = tmp_path / "run"
    train(world, run, monkeypatch)
    final = run / "checkpoints" / "step-0000006"
    reference = tensors_of(final)
    if damage == "flipped bit":  # inside the tensor data, not the header: safetensors itself would not notice
        flip_bit(final / "tensors.safetensors")
    elif damage == "truncated":
        (final / "tensors.safetensors").write_bytes((final / "tensors.safetensors").read_bytes()[:100])
    else:  # the state file rewritten with a consistent checksum: caught by validation, not by the checksum
        state = {} if damage == "empty state" else {**json.loads((final / "state.json").read_text()), "step": -5}
        (final / "state.json").write_text(json.dumps(state))
        sums = json.loads((final / "checksums.json").read_text())
        sums["state.json"] = hashlib.sha256((final / "state.json").read_bytes()).hexdigest()
        (final / "checksums.json").write_text(json.dumps(sums))
    with pytest.warns(CheckpointWarning, match=r"step-0000006 is (corrupt|unreadable).*using step-0000003"):
        found = latest_checkpoint(run)
    assert found.name == "step-0000003" and found.state["step"] == 3 == found.step
    with pytest.warns(CheckpointWarning):
        trainer = train(world, run, monkeypatch, resume=True)
    assert trainer.step == 6 and same(tensors_of(final), reference)  # recomputed identically
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]


def test_no_intact_checkpoint_is_one_clear_error(world, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(world, run, monkeypatch)
    for path in list_checkpoints(run):
        flip_bit(path / "tensors.safetensors")
    with pytest.raises(MetalmError, match=r"no intact checkpoint in .*checkpoints: checkpoint .*step-0000006 is corrupt"):
        train(world, run, monkeypatch, resume=True)
    from metalm.cli import main

    assert main(["eval", "--run-dir", str(run), "--tasks", "toy_cls", "--episodes", "1", "--methods", "meta"]) == 2


def test_a_non_finite_tensor_is_never_checkpointed(tmp_path):
    good = {"meta/w": torch.ones(2), "rng/torch": torch.zeros(3, dtype=torch.uint8)}
    save_checkpoint(tmp_path, 1, good, {})
    with pytest.raises(NonFiniteError, match="refusing to checkpoint step 2: 1 tensor.*'meta/w'"):
        save_checkpoint(tmp_path, 2, {**good, "meta/w": torch.tensor([1.0, float("nan")])}, {})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000001"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_nonfinite_step_is_skipped_counted_and_the_run_goes_on(world, tmp_path, monkeypatch):
    one = train(world, tmp_path / "one", monkeypatch, max_steps=1)
    after_one = {k: v.detach().clone() for k, v in one.algorithm.meta_parameters().items()}
    cls, calls = type(one.algorithm), []
    original = cls.meta_gradients

    def nan_at_step_two(self, batch):  # the meta-gradient of step 2 is NaN (as after an overflow)
        metrics = original(self, batch)
        calls.append(1)
        if len(calls) == 2:
            for p in self.meta_parameters().values():
                p.grad = torch.full_like(p, float("nan"))
        return metrics

    monkeypatch.setattr(cls, "meta_gradients", nan_at_step_two)
    run = tmp_path / "run"
    train(world, run, monkeypatch, max_steps=3, checkpoint_every=1)
    step_two = tensors_of(run / "checkpoints" / "step-0000002")
    assert all(torch.equal(step_two[f"meta/{k}"], v) for k, v in after_one.items())  # step 2 changed nothing
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_nonfinite"] for r in log] == [0, 1, 1]
    state = json.loads((run / "checkpoints" / "step-0000003" / "state.json").read_text())
    assert state["nonfinite"] == {"total": 1, "run": 0}  # step 3 was finite again
    # A run that ends on a skipped step says so (its last steps learned nothing).
    calls.clear()
    with pytest.raises(NonFiniteError, match="the run ended on 1 step"):
        train(world, tmp_path / "ends", monkeypatch, max_steps=2)
    assert (tmp_path / "ends" / "checkpoints" / "step-0000002").is_dir()  # finite weights, saved


def _cli_train(world, run, *args):
    return subprocess.run([sys.executable, "-m", "metalm.cli", "train", str(world["config"]), "--run-dir", str(run),
                           "--quiet", "max_steps=6", "checkpoint_every=1", *args], env=world["env"],
                          capture_output=True, text=True, timeout=300)


def _model_with(world, tmp_path, suffix, value):
    """A copy of the tiny model with ``value`` at one entry of the first weight whose name ends with ``suffix``."""
    model_dir = tmp_path / "model"
    shutil.copytree(load_train_config(world["config"]).model, model_dir)
    from safetensors.torch import save_file
    weights = load_file(str(model_dir / "model.safetensors"))
    weights[next(k for k in weights if k.endswith(suffix))][0, 0] = value
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    return model_dir


@pytest.mark.parametrize("case", ["NaN in a frozen MLP weight", "inf in an adapted layer's attention"])
def test_nonfinite_training_stops_with_one_line_and_saves_nothing_nonfinite(world, tmp_path, case):
    """The fault is non-finite by IEEE arithmetic on every CPU (NaN propagates; inf in a projection gives
    inf - inf or inf * 0 in the attention): no overflow has to happen for the test to mean something."""
    run = tmp_path / "run"
    suffix, value = (("mlp.down_proj.weight", float("nan")) if case.startswith("NaN")
                     else ("layers.1.self_attn.q_proj.base_layer.weight", float("inf")))
    model = _model_with(world, tmp_path, suffix.replace("base_layer.", ""), value)
    proc = _cli_train(world, run, f"model={model}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("metalm: error: ") and "3 consecutive steps (to step 3)" in message
    assert "NaN or infinite" in message and "Traceback" not in proc.stderr
    assert steps_logged(run) == [1, 2]  # the third skipped step stopped the run before it was logged
    assert [json.loads(line)["skipped_nonfinite"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
    for path in list_checkpoints(run):
        assert all(bool(torch.isfinite(v).all()) for v in tensors_of(path).values() if v.is_floating_point())


def test_a_run_whose_meta_gradient_is_exactly_zero_stops_and_applies_none_of_it(world, tmp_path, monkeypatch):
    """A diverged inner loop can end in finite but dead values: saturated softmaxes, a loss pinned at
    ln V, a meta-gradient of exactly zero. Injected here (zeroed gradients), the same on every CPU: the
    steps are not applied (AdamW would still move the weights by weight decay), 3 in a row stop the run."""
    cls = type(train(world, tmp_path / "one", monkeypatch, max_steps=1).algorithm)
    original = cls.meta_gradients

    def zero_from_step_two(self, batch):
        metrics = original(self, batch)
        if self.outer_steps >= 1:
            for p in self.meta_parameters().values():
                p.grad = torch.zeros_like(p)
        return metrics

    monkeypatch.setattr(cls, "meta_gradients", zero_from_step_two)
    run = tmp_path / "run"
    with pytest.raises(metalm.DivergedError, match=r"3 consecutive steps \(to step 4\) had a meta-gradient of "
                                                   r"exactly zero; query loss .* ln V = 6\.2383 .* 512-token"):
        train(world, run, monkeypatch, max_steps=6, checkpoint_every=1)
    assert steps_logged(run) == [1, 2, 3]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["zero_grad_steps"] for r in log] == [0, 1, 2] and [r["grad_norm"] for r in log][1:] == [0.0, 0.0]
    step_one, step_three = (tensors_of(run / "checkpoints" / f"step-000000{i}") for i in (1, 3))
    assert all(torch.equal(step_one[k], step_three[k]) for k in step_one if k.startswith("meta/"))  # none applied
    # max_zero_grad_steps=0 counts the steps and never stops.
    done = train(world, tmp_path / "counted", monkeypatch, max_steps=4, max_zero_grad_steps=0)
    assert done.zero_grad == {"total": 3, "run": 3}


def test_inner_lr_1e30_stops_the_cli_run_in_one_line(world, tmp_path):
    """The case found on a CPU where an inner learning rate of 1e30 ends finite (grad_norm 0.0, query loss
    ln 512) and the run used to exit 0. Whether this CPU's kernels overflow to inf or saturate to a dead
    zero gradient, the run stops after 3 steps with exit 2 and one line, nothing applied."""
    run = tmp_path / "run"
    proc = _cli_train(world, run, "algorithm.inner.lr=1e30")
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("metalm: error: ") and "3 consecutive steps (to step 3)" in message
    assert "Traceback" not in proc.stderr
    assert steps_logged(run) == [1, 2]
    for path in list_checkpoints(run):
        assert all(bool(torch.isfinite(v).all()) for v in tensors_of(path).values() if v.is_floating_point())


def test_adapt_flags_non_finite_weights_when_asked():
    model = make_model("gpt2", adapter=metalm.AdapterConfig(rank=2, layers="all"), dtype=torch.float32)
    fast = metalm.select_parameters(model, metalm.AdapterConfig(rank=2, layers="all")).fast_params(model)
    support = episodes(1)[0].support
    metalm.adapt(model, fast, support, steps=1, lr=0.1, check_finite=True)
    out = metalm.adapt(model, fast, support, steps=3, lr=1e30)  # returned as is by default
    assert not all(bool(torch.isfinite(v).all()) for v in out.values())
    with pytest.raises(NonFiniteError, match=r"adapt: .* is NaN or infinite after 3 step\(s\) at lr 1e\+30"):
        metalm.adapt(model, fast, support, steps=3, lr=1e30, check_finite=True)


@pytest.mark.slow
def test_sigkill_before_the_first_checkpoint_then_resume_is_the_same_run(world, tmp_path):
    def cli(run, *extra):
        return subprocess.Popen([sys.executable, "-m", "metalm.cli", "train", str(world["config"]), "--run-dir",
                                 str(run), "--quiet", "checkpoint_every=6", *extra], env=world["env"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert cli(reference).wait(timeout=300) == 0
    proc = cli(killed)
    deadline = time.time() + 120
    log = killed / "log.jsonl"
    while time.time() < deadline and not (log.is_file() and log.read_text()):  # until the first step is logged
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list_checkpoints(killed) and steps_logged(killed)  # killed between the first log line and checkpoint
    assert cli(killed, "--resume").wait(timeout=300) == 0
    assert steps_logged(killed) == [1, 2, 3, 4, 5, 6]
    assert same(tensors_of(killed / "checkpoints" / "step-0000006"), tensors_of(reference / "checkpoints" / "step-0000006"))
    a, b = ((r / "log.jsonl").read_text().splitlines() for r in (reference, killed))
    drop = lambda line: {k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
    assert [drop(x) for x in a] == [drop(x) for x in b]
