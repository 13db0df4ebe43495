"""The meta-training recipe: checkpoints, exact resume after SIGKILL, accumulation, schedules, config errors."""

import json
import math
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from metalm.errors import ConfigError, MetalmError
from metalm.train import MetaTrainer, OuterConfig, load_train_config, lr_lambda

from .data.fixtures import make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"),
                      outer={"lr": 0.01, "meta_batch": 2, "schedule": "cosine", "warmup_steps": 2},
                      max_steps=24, val_every=5, val_episodes=2, checkpoint_every=3, keep_checkpoints=2)


def run_cli(world, run_dir, *extra, wait=True):
    cmd = [sys.executable, "-m", "metalm.cli", "train", str(world["config"]), "--run-dir", str(run_dir), "--quiet",
           *extra]
    proc = subprocess.Popen(cmd, env=world["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    return proc


def final_tensors(run_dir):
    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return last.name, load_file(str(last / "tensors.safetensors"))


def whole_and_resumed(world, tmp_path, steps=4):
    """Train ``world``'s config for ``steps`` steps in one go and in two halves (``--resume``) through the
    CLI; returns the whole run's folder and final checkpoint tensors after checking both runs end
    bit-identical at the same step."""
    from metalm.cli import main

    whole, split = tmp_path / "whole", tmp_path / "split"
    n, half = str(steps), str(steps // 2)
    assert main(["train", str(world["config"]), "--run-dir", str(whole), "--max-steps", n, "--quiet"]) == 0
    assert main(["train", str(world["config"]), "--run-dir", str(split), "--max-steps", half, "--quiet"]) == 0
    assert main(["train", str(world["config"]), "--run-dir", str(split), "--max-steps", n, "--quiet", "--resume"]) == 0
    (name_a, a), (name_b, b) = final_tensors(whole), final_tensors(split)
    assert name_a == name_b == f"step-{steps:07d}" and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    return whole, a


@pytest.mark.slow
def test_sigkill_then_resume_ends_bit_identical(world, tmp_path):
    reference = tmp_path / "reference"
    run_cli(world, reference)
    killed = tmp_path / "killed"
    proc = run_cli(world, killed, wait=False)
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("step-0000003")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(0).uniform(0.0, 0.6))  # an arbitrary moment after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    run_cli(world, killed, "--resume")
    name_a, a = final_tensors(reference)
    name_b, b = final_tensors(killed)
    assert name_a == name_b == "step-0000024"
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng/")), "weights or optimizer state differ"
    steps = [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 25))
    assert len(list((killed / "checkpoints").glob("step-*"))) == 2


def test_refuses_to_overwrite_and_ignores_partial_checkpoints(world, tmp_path, monkeypatch):
    config = load_train_config(world["config"], {"max_steps": 3, "val_every": 0})
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    MetaTrainer(config, tmp_path / "run").train(progress=False)
    with pytest.raises(MetalmError, match="--resume"):
        MetaTrainer(config, tmp_path / "run").train(progress=False)
    partial = tmp_path / "run" / "checkpoints" / ".step-0000004-abc"
    partial.mkdir()
    (partial / "state.json").write_text("{")
    trainer = MetaTrainer(load_train_config(world["config"], {"max_steps": 4, "val_every": 0}), tmp_path / "run")
    trainer.train(resume=True, progress=False)
    assert trainer.step == 4 and not partial.exists()


def test_accumulation_equals_a_larger_meta_batch(world, tmp_path, monkeypatch):
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    results = []
    for outer in ({"meta_batch": 2, "accumulate": 1}, {"meta_batch": 1, "accumulate": 2}):
        config = load_train_config(world["config"], {"max_steps": 2, "val_every": 0, "outer": outer,
                                                      "dtype": "float64"})
        trainer = MetaTrainer(config, tmp_path / str(outer["accumulate"]))
        trainer.train(progress=False)
        results.append({k: v.detach().clone() for k, v in trainer.algorithm.meta_parameters().items()})
    assert all(torch.allclose(results[0][k], results[1][k], atol=1e-12) for k in results[0])


def test_schedules_by_hand():
    f = lr_lambda(OuterConfig(schedule="cosine", warmup_steps=2), max_steps=12)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0) and f(7) == pytest.approx(0.5) and f(12) == pytest.approx(0.0)
    g = lr_lambda(OuterConfig(schedule="linear"), max_steps=10)
    assert g(0) == 1.0 and g(5) == pytest.approx(0.5) and g(10) == 0.0


def test_config_errors(world, tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as err:
        load_train_config(world["config"], {"algorithm": {"name": "maml", "inner": {"stesp": 2}}})
    assert err.value.field == "algorithm.inner.stesp" and err.value.source == str(world["config"])
    with pytest.raises(ConfigError, match="unknown algorithm"):
        load_train_config(None, {"algorithm": {"name": "mamI"}})
    with pytest.raises(ConfigError) as err:
        load_train_config(world["config"], {"outer": {"lr": 0}})
    assert err.value.field == "outer.lr"
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    config = load_train_config(world["config"], {"tasks": ["toy_cls", "news"]})
    with pytest.raises(ConfigError, match="'news' is held out"):
        MetaTrainer(config, tmp_path / "leak")


def test_train_eval_report_export_end_to_end(world, tmp_path, monkeypatch, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from metalm.cli import main
    from metalm.data import CollateConfig, EpisodeSampler, SamplerConfig
    from metalm.eval import option_scores
    from metalm.train import build_registry, load_run

    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    run = tmp_path / "run"
    assert main(["train", str(world["config"]), "--run-dir", str(run), "--max-steps", "4", "--quiet",
                 "val_every=2", "meta.shared=norms"]) == 0
    other = tmp_path / "reptile"
    assert main(["train", str(world["config"]), "--run-dir", str(other), "--max-steps", "2", "--quiet",
                 "val_every=0", "algorithm.name=reptile"]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", "--run-dir", str(run), "--run-dir", str(other), "--shots", "1,2", "--episodes", "2",
                 "--ways", "2", "--queries", "1", "--json", str(out), "--quiet", "finetune_lrs=[0.1]",
                 "inner_steps=[1,2]", "cost_episodes=1"]) == 0
    report = json.loads(out.read_text())
    rows = {"zeroshot", "zeroshot-cal", "icl", "icl-cal", "finetune", "meta:maml", "meta:reptile"}
    assert {r["method"] for r in report["macro"]} == rows | {"meta:maml@ft", "meta:reptile@ft"}  # ft's budget too
    best = max((r for r in report["macro"] if r["method"] in rows - {"meta:maml", "meta:reptile"}),
               key=lambda r: r["accuracy"])["method"]  # the default reference: the best baseline
    assert {(p["method"], p["reference"], p["task"]) for p in report["paired"] if p["shots"] == 1} == \
        {(m, report["reference"]["1"], t) for m in rows | {"meta:maml@ft", "meta:reptile@ft"} if m != best
         for t in ("macro", *report["tasks"])}
    assert report["reference"]["1"] == best and report["seeds"]["seeds"] == [1234]
    assert {(r["method"], r["inner_steps"]) for r in report["inner_steps_sweep"]} == \
        {(m, k) for m in ("finetune", "meta:maml") for k in (1, 2)}
    assert "| meta:reptile |" in capsys.readouterr().out
    # The reptile run (another selection: measured on a model of its own) reports its adaptation cost too.
    assert {"finetune", "meta:maml", "meta:maml@ft", "meta:reptile", "meta:reptile@ft"} <= set(report["adaptation_cost"])
    # A new task's whole cost, each row alone, the separately measured reptile run's rows included.
    assert set(report["episode_cost"]) == rows | {"meta:maml@ft", "meta:reptile@ft"}
    assert all(set(c) == {"1", "2"} and c["1"]["episodes"] == len(report["tasks"])  # one episode a task
               for c in report["episode_cost"].values())
    assert report["episode_cost_seconds"] > 0
    assert main(["report", str(run)]) == 0
    for png in ("training.png", "accuracy_vs_shots.png", "accuracy_vs_inner_steps.png", "accuracy_vs_cost.png"):
        assert (run / "report" / png).stat().st_size > 1000
    assert "| row | shots | macro accuracy | seconds per new task |" in (run / "report" / "report.md").read_text()
    assert main(["report", str(out)]) == 0  # the evaluation's JSON alone, e.g. a baselines table
    assert (tmp_path / "eval_report" / "accuracy_vs_cost.png").stat().st_size > 1000
    assert "Pareto front" in (tmp_path / "eval_report" / "report.md").read_text()
    assert "| chance |" in (run / "report" / "report.md").read_text()
    assert "Paired differences" in (run / "report" / "report.md").read_text()
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(len(r["tasks"]) == len(r["tokens"]) == 2 and set(r["tasks"]) <= {"toy_cls", "toy_mc"} for r in logged)
    assert "| task | episodes | tokens per episode | mean step seconds |" in (run / "report" / "report.md").read_text()
    seen = sum(n for r in logged for n in r["tokens"])  # 4 steps x 2 episodes
    assert f"Seen in training: 8 episodes of 2 tasks, {seen:,} tokens" in (run / "report" / "report.md").read_text()
    export = tmp_path / "export"
    assert main(["export", str(run), str(export)]) == 0
    assert (export / "shared_weights.safetensors").is_file()

    # The exported adapter, loaded by PEFT on the base model plus the shared-weight changes, scores
    # the query options exactly as the harness does with the run's meta-learned state.
    loaded = load_run(run, torch.device("cpu"))
    config, tok, algorithm = loaded.config, loaded.tokenizer, loaded.load_into_model()
    registry = build_registry(config)
    episode = EpisodeSampler([registry["toy_cls"]], SamplerConfig(ways=2, shots=1, queries=2), seed=0).sample()
    ours = option_scores(algorithm.model, {}, episode.query, tok, CollateConfig(max_length=64))
    base = AutoModelForCausalLM.from_pretrained(config.model)
    base.load_state_dict(load_file(str(export / "shared_weights.safetensors")), strict=False)
    peft = PeftModel.from_pretrained(base, str(export)).eval()
    theirs = option_scores(peft, {}, episode.query, tok, CollateConfig(max_length=64))
    assert torch.allclose(torch.tensor(ours), torch.tensor(theirs), atol=1e-5)
    assert any(abs(a - b) > 1e-3 for a, b in zip(ours[0], option_scores(AutoModelForCausalLM.from_pretrained(
        config.model), {}, episode.query, tok, CollateConfig(max_length=64))[0], strict=True))  # training mattered


def test_multitask_run_resumes_exactly_and_is_the_mtl_row(world, tmp_path, monkeypatch, capsys):
    from metalm.cli import main

    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    mtl = ["algorithm={name: multitask, weighting: dwa, heads: task, inner: {steps: 2, lr: 0.3}}",
           "extra_tasks=[plays]", "conflict_every=2", "conflict_tasks=3", "val_every=2"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["train", str(world["config"]), "--run-dir", str(whole), "--max-steps", "4", "--quiet", *mtl]) == 0
    assert main(["train", str(world["config"]), "--run-dir", str(split), "--max-steps", "2", "--quiet", *mtl]) == 0
    assert main(["train", str(world["config"]), "--run-dir", str(split), "--max-steps", "4", "--quiet",
                 "--resume"]) == 0
    (name_a, a), (name_b, b) = final_tensors(whole), final_tensors(split)
    assert name_a == name_b and a.keys() == b.keys()
    assert any(k.startswith("meta/task/head/toy_cls/") for k in a)  # the task head is trained and saved
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((sorted((whole / "checkpoints").glob("step-*"))[-1] / "state.json").read_text())
    assert set(state["algorithm"]["history"]) == {"toy_cls", "toy_mc", "plays"} and state["algorithm"]["outer_steps"] == 4
    logs = [json.loads(line) for line in (split / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3, 4] and "conflict_mean" in logs[1] and "val_query_loss" in logs[3]
    conflict = [json.loads(line) for line in (split / "conflict.jsonl").read_text().splitlines()]
    assert [c["step"] for c in conflict] == [2, 4] and "plays" in conflict[0]["tasks"]
    assert main(["export", str(whole), str(tmp_path / "export")]) == 0
    heads = load_file(str(tmp_path / "export" / "task_params.safetensors"))
    assert torch.equal(heads["head/toy_cls/weight"], a["meta/task/head/toy_cls/weight"])

    meta = tmp_path / "meta"
    assert main(["train", str(world["config"]), "--run-dir", str(meta), "--max-steps", "2", "--quiet",
                 "val_every=0"]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", "--run-dir", str(meta), "--run-dir", str(whole), "--shots", "1", "--episodes", "2",
                 "--ways", "2", "--queries", "1", "--json", str(out), "--quiet", "finetune_lrs=[0.1]"]) == 0
    report = json.loads(out.read_text())
    assert {r["method"] for r in report["macro"]} == {"zeroshot", "zeroshot-cal", "icl", "icl-cal", "finetune",
                                                      "meta:maml", "meta:maml@ft", "mtl", "mtl@ft"}
    assert "| mtl |" in capsys.readouterr().out
    assert main(["eval", "--run-dir", str(meta), "--methods", "zeroshot,mtl", "--quiet"]) == 2
    assert "mtl needs a run trained with algorithm: multitask" in capsys.readouterr().err
    for bad, field in ((["--reference", "nosuch"], "reference"), (["--seeds", "0"], "seeds"),
                       (["finetune_lrs=[]", "finetune_optimizers=[sgd]"], "finetune_lrs"),
                       (["--reference", "mtl", "--methods", "zeroshot,meta"], "reference"),
                       (["--shots", "a,b"], "--shots")):
        assert main(["eval", "--run-dir", str(meta), "--quiet", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("metalm: error: ") and field in err and "\n" not in err

    diag = tmp_path / "diag.json"
    assert main(["diagnose", "--run-dir", str(whole), "--batches", "2", "--json", str(diag), "--gap", "--seen", "2",
                 "--episodes", "2", "--gap-shots", "1"]) == 0
    result = json.loads(diag.read_text())
    assert result["tasks"] == ["toy_cls", "toy_mc", "plays"]
    assert len(result["cosine"]) == 3 and all(len(r) == 3 for r in result["cosine"])
    assert {r["method"] for r in result["gap"]} == {"zeroshot", "mtl"}
    assert diag.with_suffix(".png").stat().st_size > 1000 and (tmp_path / "diag_gap.png").stat().st_size > 1000



def test_a_deletion_killed_midway_leaves_nothing_behind(tmp_path):
    """Pruning renames a checkpoint before deleting it; a folder half-deleted by a kill (as older
    versions could leave) is removed by the next start, so only complete checkpoints remain."""
    from metalm.runtime.checkpoint import clean_partial, list_checkpoints, save_checkpoint

    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"w": torch.ones(2) * step}, {}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-0000002", "step-0000003"]  # no trash left by pruning
    (tmp_path / "checkpoints" / "step-0000002" / "state.json").unlink()  # killed while deleting it
    (tmp_path / "checkpoints" / ".trash-step-0000001").mkdir()
    clean_partial(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000003"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000003"]


def test_an_episode_whose_answer_does_not_fit_is_skipped_the_same_way_on_resume(tmp_path, monkeypatch):
    """A meta-train pool holding answers longer than collate.max_length (here 4 tokens: some of toy_mc's)
    trains on: each such episode is skipped and another drawn, warned once per task and counted, and a
    run resumed halfway ends bit-identical to one run whole (the skips replay). A pool where no episode
    fits stops with one error naming the tasks."""
    import metalm.train

    world = make_world(tmp_path / "w", outer={"lr": 0.01, "meta_batch": 2}, collate={"max_length": 4},
                       val_every=0, checkpoint_every=2)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    trainer = MetaTrainer(load_train_config(world["config"]), tmp_path / "direct")
    with pytest.warns(UserWarning, match="'toy_mc' skipped and another drawn: an answer of 4 tokens") as rec:
        trainer.train(max_steps=3, progress=False)
    assert trainer.unfit.get("toy_mc", 0) >= 2 and set(trainer.unfit) == {"toy_mc"}
    assert sum("skipped and another drawn" in str(r.message) for r in rec) == 1  # once per task
    with pytest.warns(UserWarning, match="skipped and another drawn"):
        whole_and_resumed(world, tmp_path, steps=4)
    monkeypatch.setattr(metalm.train, "MAX_UNFIT_DRAWS", 3)
    cfg = load_train_config(world["config"], {"collate": {"max_length": 2}, "tasks": ["toy_mc"]})
    with pytest.raises(MetalmError, match="3 episodes in a row hold an answer longer than collate.max_length=2 "
                                          r"\(tasks toy_mc\)"), pytest.warns(UserWarning):
        MetaTrainer(cfg, tmp_path / "none").train(max_steps=1, progress=False)


def test_autocast_modes_on_a_cpu(tmp_path, monkeypatch):
    """``autocast: auto`` keeps a CPU run in float32 (as before), ``bf16`` runs its matmuls in bfloat16 (the
    parameters stay float32) and trains to finite losses, ``float32`` is float32. The values are
    strings a YAML file keeps as they are (``off`` would read as false)."""
    dtypes = {}
    for mode in ("auto", "bf16", "float32"):
        world = make_world(tmp_path / mode, max_steps=2, val_every=0, autocast=mode, device="cpu")
        monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
        trainer = MetaTrainer(load_train_config(world["config"]), tmp_path / mode / "run")
        with trainer._autocast():
            dtypes[mode] = (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        if mode == "bf16":
            last = trainer.train(progress=False)
            assert math.isfinite(last["query_loss"])
            assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert dtypes == {"auto": torch.float32, "bf16": torch.bfloat16, "float32": torch.float32}


def test_bf16_on_a_cpu_without_bf16_instructions_is_warned(tmp_path, monkeypatch):
    """bf16 autocast on a CPU that emulates bf16 products (no AVX512-BF16 / AMX flag) is warned once at
    start; a CPU with them, ``auto`` and ``float32`` are not. The flag is read from /proc/cpuinfo."""
    import warnings

    import metalm.runtime.environment as environment
    from metalm.runtime.environment import cpu_has_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_has_bf16(info) is False
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert cpu_has_bf16(info) is True
    assert cpu_has_bf16(tmp_path / "absent") is None and cpu_has_bf16(tmp_path) is None
    for mode, native, warned in (("bf16", False, True), ("bf16", True, False), ("bf16", None, False),
                                 ("auto", False, False)):
        world = make_world(tmp_path / f"{mode}{native}", max_steps=1, autocast=mode, device="cpu")
        monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
        monkeypatch.setattr(environment, "cpu_has_bf16", lambda native=native: native)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            MetaTrainer(load_train_config(world["config"]), tmp_path / f"{mode}{native}" / "run")
        assert any("AVX512-BF16" in str(w.message) for w in seen) == warned, (mode, native)
