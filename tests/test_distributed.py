"""torchrun on CPU (gloo, loopback): the same meta-parameters and evaluation table as one process."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from metalm import ConfigError
from metalm.runtime.distributed import Context, init, map_sharded, shard

from .data.fixtures import make_world


def test_shard_splits_the_meta_batch_evenly():
    assert [shard(4, Context(r, 2)) for r in range(2)] == [range(0, 2), range(2, 4)]
    assert shard(3, Context()) == range(0, 3)
    with pytest.raises(ConfigError, match="outer.meta_batch.*3 episodes cannot be split evenly over 2"):
        shard(3, Context(0, 2))
    assert map_sharded([1, 2, 3], lambda x: x * 10) == [10, 20, 30]


@pytest.mark.parametrize("var", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_sharded_engines_are_refused(monkeypatch, var):
    monkeypatch.setenv(var, "true")
    with pytest.raises(ConfigError, match="breaks double backward"):
        init()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    # maml: second-order meta-gradients across processes
    world = make_world(tmp_path_factory.mktemp("dist"), outer={"lr": 0.01, "meta_batch": 4}, max_steps=3,
                       val_every=0, checkpoint_every=1)
    world["env"].update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    return world


def metalm(world, *args, procs=1):
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
        if procs > 1 else [sys.executable]
    proc = subprocess.run([*launch, "-m", "metalm.cli", *map(str, args)], env=world["env"], capture_output=True,
                          text=True, timeout=600)
    # Any non-zero exit fails, a rank's abort in gloo's teardown included (benchmarks/speed/teardown.py
    # counts clean exits over 50 launches).
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def meta_tensors(run_dir):
    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return last.name, {k: v for k, v in load_file(str(last / "tensors.safetensors")).items() if k.startswith("meta/")}


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_with_another_world_size(world, tmp_path):
    one, two, mixed = tmp_path / "one", tmp_path / "two", tmp_path / "mixed"
    metalm(world, "train", world["config"], "--run-dir", one, "--quiet")
    metalm(world, "train", world["config"], "--run-dir", two, "--quiet", procs=2)
    (step_a, a), (step_b, b) = meta_tensors(one), meta_tensors(two)
    assert step_a == step_b and int(step_a.split("-")[1]) == 3
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    assert any(not torch.equal(a[k], load_file(str(sorted((one / "checkpoints").glob("step-*"))[0] /
                                                   "tensors.safetensors"))[k]) for k in a)
    # Rank 0 alone wrote the log; the meta-batch metrics are averaged over ranks.
    assert len((two / "log.jsonl").read_text().splitlines()) == 3
    # Two processes for 2 steps, then one process resumes: the same run.
    metalm(world, "train", world["config"], "--run-dir", mixed, "--quiet", "--max-steps", 2, procs=2)
    metalm(world, "train", world["config"], "--run-dir", mixed, "--quiet", "--resume", "--max-steps", 3)
    _, c = meta_tensors(mixed)
    assert all(torch.allclose(a[k], c[k], rtol=1e-5, atol=1e-6) for k in a)


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process(world, tmp_path):
    run = tmp_path / "run"
    metalm(world, "train", world["config"], "--run-dir", run, "--quiet", "--max-steps", 1)
    common = ["eval", "--run-dir", run, "--shots", "1,2", "--episodes", "3", "--ways", "2", "--queries", "1",
              "--quiet", "finetune_lrs=[0.1,0.3]", "inner_steps=[1,2]"]
    metalm(world, *common, "--json", tmp_path / "one.json")
    metalm(world, *common, "--json", tmp_path / "two.json", procs=2)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    for key in ("results", "macro", "inner_steps_sweep", "finetune_lr"):
        assert one[key] == two[key], key


def test_fsdp_refuses_second_order_and_names_the_alternatives(tmp_path):
    from metalm.run import load_train_config

    base = {"model": "tiny", "distributed": "fsdp"}
    with pytest.raises(ConfigError, match=r"distributed.*maml.*double backward.*fomaml.*inner.recompute.*imaml"):
        load_train_config(None, {**base, "algorithm": {"name": "maml"}})
    with pytest.raises(ConfigError, match="distributed.*imaml"):
        load_train_config(None, {**base, "algorithm": {"name": "imaml"}})
    with pytest.raises(ConfigError, match="algorithm.inner.vmap.*fsdp"):
        load_train_config(None, {**base, "algorithm": {"name": "fomaml", "inner": {"vmap": True}}})
    with pytest.raises(ConfigError, match="algorithm.weighting.*upgrad.*fsdp.*equal, fixed, uncertainty, dwa"):
        load_train_config(None, {**base, "algorithm": {"name": "multitask", "weighting": "upgrad"}})
    with pytest.raises(ConfigError, match="conflict_every.*fsdp"):
        load_train_config(None, {**base, "conflict_every": 2})
    for name in ("fomaml", "reptile", "multitask", "metaicl"):
        assert load_train_config(None, {**base, "algorithm": {"name": name}}).distributed == "fsdp"
    first_order_maml = {"name": "maml", "inner": {"first_order": True}}
    assert load_train_config(None, {**base, "algorithm": first_order_maml}).distributed == "fsdp"


@pytest.fixture(scope="module")
def fsdp_world(tmp_path_factory):
    # FOMAML with the top layer's base weights shared (so sharded, with sharded AdamW state), and a
    # validation every 2 steps (every process runs it: the layers' weights are gathered). float64: the
    # processes sum in another order (reduce-scatter, per-shard norms), a gradient's rounding error is
    # ~1e-16 of its scale, and AdamW turns an error dg into at most lr/eps * dg = 1e6 dg per step
    # (where |g| ~ eps), so 3 steps agree to ~1e-9 (in float32 the same bound is ~1e-4: uninformative).
    world = make_world(tmp_path_factory.mktemp("fsdp"), outer={"lr": 0.01, "meta_batch": 4}, max_steps=3,
                       dtype="float64",
                       algorithm={"name": "fomaml", "inner": {"steps": 2, "lr": 0.3}}, meta={"shared": "top:1"},
                       val_every=2, val_episodes=2, checkpoint_every=1)
    world["env"].update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    return world


@pytest.mark.slow
def test_fsdp_two_processes_end_with_the_weights_of_one_and_hold_half_the_base(fsdp_world, tmp_path):
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    world = fsdp_world
    metalm(world, "train", world["config"], "--run-dir", one, "--quiet")
    metalm(world, "train", world["config"], "--run-dir", two, "--quiet", "distributed=fsdp", procs=2)
    (step_a, a), (step_b, b) = meta_tensors(one), meta_tensors(two)
    assert step_a == step_b and set(a) == set(b)
    assert any("lora_" not in k for k in a)  # shared (sharded) base weights are among them
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-9) for k in a)
    logs = [[json.loads(line) for line in (r / "log.jsonl").read_text().splitlines()] for r in (one, two)]
    assert logs[0][1]["val_query_loss"] == pytest.approx(logs[1][1]["val_query_loss"], rel=1e-5)
    mib_one, mib_two = logs[0][0]["base_param_mib"], logs[1][0]["base_param_mib"]
    assert mib_one["held"] == [mib_one["whole"]] and mib_two["whole"] == mib_one["whole"]
    # each process holds its shard: the two shards add up to the whole, neither more than half plus
    # one row of the largest tensor (torch.chunk's uneven split)
    assert sum(mib_two["held"]) == pytest.approx(mib_two["whole"])
    assert max(mib_two["held"]) <= 0.52 * mib_two["whole"]
    # killed after 2 steps, resumed under fsdp: the same run
    metalm(world, "train", world["config"], "--run-dir", resumed, "--quiet", "--max-steps", 2, "distributed=fsdp",
           procs=2)
    metalm(world, "train", world["config"], "--run-dir", resumed, "--quiet", "--resume", "--max-steps", 3,
           "distributed=fsdp", procs=2)
    _, c = meta_tensors(resumed)
    assert all(torch.allclose(b[k], c[k], rtol=0, atol=1e-9) for k in b)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reptile", "metaicl", "multitask"])
def test_fsdp_runs_the_first_order_algorithms_like_replicated_processes(fsdp_world, tmp_path, name):
    # Against two replicated processes: multi-task's per-task mean is taken over each process's
    # episodes, so its two-process run differs from one process whatever the sharding.
    args = ["train", fsdp_world["config"], "--quiet", "--max-steps", 2, f"algorithm.name={name}",
            *(["meta.shared=none"] if name == "reptile" else [])]
    metalm(fsdp_world, *args, "--run-dir", tmp_path / "replicated", procs=2)
    metalm(fsdp_world, *args, "--run-dir", tmp_path / "sharded", "distributed=fsdp", procs=2)
    (_, a), (_, b) = meta_tensors(tmp_path / "replicated"), meta_tensors(tmp_path / "sharded")
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-9) for k in a)


@pytest.mark.slow
def test_fsdp_shards_gpt2_with_tied_embeddings_like_one_process(fsdp_world, tmp_path):
    from metalm.models import save_tiny_model

    from .data.fixtures import corpus

    model = save_tiny_model(tmp_path / "gpt2", corpus(), "gpt2")
    args = ["train", fsdp_world["config"], "--quiet", "--max-steps", 2, f"model={model}"]
    metalm(fsdp_world, *args, "--run-dir", tmp_path / "one")
    metalm(fsdp_world, *args, "--run-dir", tmp_path / "two", "distributed=fsdp", procs=2)
    (_, a), (_, b) = meta_tensors(tmp_path / "one"), meta_tensors(tmp_path / "two")
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-9) for k in a)
