"""A trained run read back as a value (metalm.run.Run) and evaluated without touching its model."""

import os
import sys
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

from metalm.cli import main
from metalm.eval import EvalConfig, Harness, eval_tasks
from metalm.run import build_registry, load_run, load_train_config
from metalm.train import MetaTrainer

from .data.fixtures import make_world


def test_a_run_is_a_value_and_evaluating_it_leaves_the_model_untouched(tmp_path, monkeypatch):
    world = make_world(tmp_path, max_steps=2, val_every=0, checkpoint_every=1)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    MetaTrainer(load_train_config(world["config"]), tmp_path / "run").train(progress=False)
    run = load_run(tmp_path / "run")
    assert run.step == 2 and run.checkpoint.name == "step-0000002" and run.config.max_steps == 2
    saved = load_file(str(run.checkpoint.path / "tensors.safetensors"))
    # The file's order, as load_file gives it: torchrun's ranks walk the tensors in one order (a hash
    # map's order, safetensors.torch.load's, differs between processes and broke fsdp resume).
    assert list(run.checkpoint.tensors) == list(saved)
    assert run.trained.keys() == run.base.keys() == run.learner.meta_parameters().keys()
    assert all(torch.equal(v, saved[f"meta/{k}"]) for k, v in run.trained.items())
    assert any(not torch.equal(run.base[k], v) for k, v in run.trained.items())  # training moved them
    own = run.learner.meta_parameters()
    assert all(torch.equal(own[k], v) for k, v in run.base.items())  # the model holds the pretrained values
    before = {k: v.detach().clone() for k, v in run.learner.model.state_dict().items()}
    config = EvalConfig(shots=[1], episodes=2, ways=2, queries=1, methods=["zeroshot", "finetune", "meta"],
                        finetune_optimizers=["sgd"], finetune_lrs=[0.3], finetune_steps=[1], val_episodes=1)
    harness = Harness.from_run(run, config)
    report = harness.run(eval_tasks(build_registry(run.config), ["toy_cls"]))
    assert {r["method"] for r in report["results"]} >= {"zeroshot", "finetune", "meta"}
    after = run.learner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # evaluation passed values, never wrote them


def test_load_into_model_writes_the_trained_values(tmp_path, monkeypatch):
    world = make_world(tmp_path, max_steps=1, val_every=0, checkpoint_every=1)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    MetaTrainer(load_train_config(world["config"]), tmp_path / "run").train(progress=False)
    run = load_run(tmp_path / "run")
    learner = run.load_into_model()
    assert all(torch.equal(p, run.trained[k]) for k, p in learner.meta_parameters().items())


OPENED: list[str] = []


def _count_opens(event: str, args: tuple) -> None:  # an audit hook stays for the process: it only records
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        OPENED.append(os.fspath(args[0]))


def test_eval_export_and_diagnose_read_each_checkpoint_file_once(tmp_path, monkeypatch, capsys):
    """One reader (metalm.runtime.checkpoint.read_checkpoint): the bytes hashed are the bytes loaded, and a
    command passes the Checkpoint value along instead of reading the folder again. (Counted with a
    Python audit hook; ``strace -f -e trace=openat`` shows the same, see benchmarks/RESULTS.md.)"""
    world = make_world(tmp_path, max_steps=1, val_every=0, checkpoint_every=1)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    MetaTrainer(load_train_config(world["config"]), tmp_path / "run").train(progress=False)
    folder = tmp_path / "run" / "checkpoints" / "step-0000001"
    if not OPENED:
        sys.addaudithook(_count_opens)
    commands = {"eval": ["eval", "--run-dir", str(tmp_path / "run"), "--shots", "1", "--episodes", "1",
                         "--methods", "zeroshot,meta", "--quiet", "val_episodes=1"],
                "export": ["export", str(tmp_path / "run"), str(tmp_path / "exported")],
                "diagnose": ["diagnose", "--run-dir", str(tmp_path / "run"), "--json", str(tmp_path / "d.json"),
                             "--episodes", "1"]}
    for name, argv in commands.items():
        OPENED.clear()
        assert main(argv) == 0, name
        opened = Counter(Path(p).name for p in OPENED if Path(p).parent == folder)
        assert opened == {"tensors.safetensors": 1, "state.json": 1, "checksums.json": 1}, (name, opened)
    capsys.readouterr()


def test_pool_fraction_trains_on_nested_subsets_of_the_meta_train_tasks(tmp_path):
    """25% of 8 tasks is 2, 50% is 4, and the smaller pool is inside the larger; the split's order is
    kept, extra tasks stay, another seed draws another subset, a share outside (0, 1] names the field."""
    import pytest
    import yaml

    from metalm.data import TaskRegistry
    from metalm.errors import ConfigError
    from metalm.run import TrainConfig, task_lists

    from .data.fixtures import SPECS, make_tasks_dir

    names = [f"t{i}" for i in range(8)]
    folder = make_tasks_dir(tmp_path, {n: SPECS["toy_cls"] for n in names})
    split = {"name": "pool", "meta_train": names, "meta_val": ["toy_gen"], "meta_test": ["news"]}
    (folder / "splits" / "pool.yaml").write_text(yaml.safe_dump(split))
    registry = TaskRegistry.from_dirs(folder)

    def pool(fraction, seed=0, extra=()):
        config = TrainConfig(model="tiny", split=str(folder / "splits" / "pool.yaml"), pool_fraction=fraction,
                             pool_seed=seed, extra_tasks=list(extra))
        return task_lists(config, registry)[0]

    quarter, half, whole = pool(0.25), pool(0.5), pool(1.0)
    assert (len(quarter), len(half), whole) == (2, 4, names)
    assert set(quarter) < set(half) < set(whole)
    assert quarter == [n for n in names if n in quarter]  # the split's order
    assert len(pool(0.3)) == 3  # ceil(2.4)
    assert pool(0.25, extra=["toy_mc"])[-1] == "toy_mc"
    assert any(pool(0.5, seed=s) != half for s in range(1, 6))
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ConfigError, match="pool_fraction"):
            TrainConfig(model="tiny", pool_fraction=bad)
