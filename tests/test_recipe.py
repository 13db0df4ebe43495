"""The evaluation recipe (metalm.eval.recipe.evaluate) called as a function, as a notebook would."""

import yaml

from metalm.eval import EvalConfig
from metalm.eval.recipe import evaluate
from metalm.run import load_train_config
from metalm.train import MetaTrainer

from .data.fixtures import make_world


def test_a_runs_rows_in_a_multi_run_evaluation_equal_the_run_evaluated_alone(tmp_path, monkeypatch):
    """Run B beside run A is read from its checkpoint onto A's model (init_from_checkpoint); alone it
    is rebuilt by load_run: two code paths, the same per-episode accuracies on the same episodes."""
    world = make_world(tmp_path, max_steps=2, val_every=0, checkpoint_every=1)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    other = yaml.safe_load(world["config"].read_text())
    other["algorithm"] = {"name": "fomaml", "inner": {"steps": 3, "lr": 0.2}}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    for name, config in (("a", world["config"]), ("b", tmp_path / "other.yaml")):
        MetaTrainer(load_train_config(config), tmp_path / name).train(progress=False)
    config = EvalConfig(shots=[1, 2], episodes=2, ways=2, queries=2, methods=["zeroshot", "meta"])
    both = evaluate(config, runs=[tmp_path / "a", tmp_path / "b"], progress=False, log=None)
    alone = evaluate(config, runs=[tmp_path / "b"], progress=False, log=None, output=tmp_path / "alone.json")
    rows = {k.split("|", 1)[1]: v for k, v in alone["per_episode"].items() if k.startswith("meta|")}
    assert rows and both["tasks"] == alone["tasks"]
    for key, values in rows.items():
        assert both["per_episode"][f"meta:fomaml|{key}"] == values, key
        assert both["per_episode"][f"zeroshot|{key}"] == alone["per_episode"][f"zeroshot|{key}"], key
    assert (tmp_path / "alone.json").is_file() and not (tmp_path / "alone.json.partial.jsonl").exists()
    assert alone["measuring_seconds"] > 0 and "measuring_seconds" not in both  # recorded where journaled


def test_an_output_that_is_a_folder_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    import pytest

    import metalm.eval.recipe as recipe
    from metalm.errors import ConfigError

    monkeypatch.setattr(recipe, "build_setting", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match="is a folder; the report") as err:
        evaluate(EvalConfig(methods=["zeroshot"]), model="tiny", output=tmp_path, log=None)
    assert err.value.field == "output"
    for every in (0, -2, 1.5, True):  # a journal's piece size, refused as early
        with pytest.raises(ConfigError, match="whole number of episodes") as err:
            evaluate(EvalConfig(methods=["zeroshot"]), model="tiny", output=tmp_path / "r.json", journal_every=every,
                     log=None)
        assert err.value.field == "--journal-every"


def test_a_learning_curves_point_is_the_run_evaluated_at_that_checkpoint(tmp_path, monkeypatch, capsys):
    """``--step N`` evaluates the runs' checkpoints of step N: the same per-episode accuracies as the run
    folder whose newest checkpoint is N (a copy without the later ones), its report beside the run as
    eval.step-NNNNNNN.json; a step without a checkpoint names the steps there are."""
    import json
    import shutil

    import pytest

    from metalm.cli import main
    from metalm.errors import ConfigError

    world = make_world(tmp_path, max_steps=2, val_every=0, checkpoint_every=1)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    run = tmp_path / "run"
    MetaTrainer(load_train_config(world["config"]), run).train(progress=False)
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    shutil.rmtree(cut / "checkpoints" / "step-0000002")
    common = ["--shots", "1", "--episodes", "2", "--ways", "2", "--queries", "2", "--methods", "zeroshot,meta",
              "--quiet"]
    assert main(["eval", "--run-dir", str(run), "--step", "1", *common]) == 0
    assert main(["eval", "--run-dir", str(cut), *common]) == 0
    assert main(["eval", "--run-dir", str(run), *common]) == 0
    at_one = json.loads((run / "eval.step-0000001.json").read_text())
    assert at_one["per_episode"] == json.loads((cut / "eval.json").read_text())["per_episode"]
    assert at_one["checkpoints"] == {str(run): "step-0000001"}
    assert json.loads((run / "eval.json").read_text())["checkpoints"] == {str(run): "step-0000002"}
    # The run's report draws its checkpoints' evaluations against the step (other tasks: left out, named).
    assert main(["eval", "--run-dir", str(run / "checkpoints" / "step-0000002"), *common]) == 0
    other = dict(at_one, tasks=["another_task"])
    (run / "eval.step-0000003.json").write_text(json.dumps(other))
    assert main(["report", str(run)]) == 0
    text = (run / "report" / "report.md").read_text()
    assert (run / "report" / "accuracy_vs_step.png").stat().st_size > 1000
    zeroshot = next(r for r in at_one["macro"] if r["method"] == "zeroshot")
    assert f"| zeroshot | 1 | {zeroshot['accuracy']:.3f} ± {zeroshot['ci95']:.3f} | " in text
    assert "| row | shots | step 1 | step 2 |" in text and "Left out (evaluated on other tasks): eval.step-0000003.json" in text
    # A checkpoint folder is that checkpoint of its run (runs can be compared each at its own step).
    config = EvalConfig(shots=[1], episodes=2, ways=2, queries=2, methods=["zeroshot", "meta"])
    folder = evaluate(config, runs=[run / "checkpoints" / "step-0000001"], progress=False, log=None)
    assert folder["per_episode"] == at_one["per_episode"] and folder["checkpoints"] == {str(run): "step-0000001"}
    with pytest.raises(ConfigError, match="is the checkpoint of step 1, not of step 2"):
        evaluate(config, runs=[run / "checkpoints" / "step-0000001"], step=2, progress=False, log=None)
    with pytest.raises(ConfigError, match="is given twice"):
        evaluate(config, runs=[run, run / "checkpoints" / "step-0000001"], progress=False, log=None)
    with pytest.raises(ConfigError, match=r"no checkpoint of step 7 \(steps checkpointed: 1, 2;") as err:
        evaluate(config, runs=[run], step=7, progress=False, log=None)
    assert err.value.field == "--step"
    with pytest.raises(ConfigError, match="give --run-dir, not --model"):
        evaluate(EvalConfig(methods=["zeroshot"]), model="tiny", step=1, progress=False, log=None)
    capsys.readouterr()


def test_two_evaluations_merged_on_their_shared_row(tmp_path, monkeypatch, capsys):
    """benchmarks/fewshot/merge_rows.py pairs a run's rows with a baselines file measured apart on the
    same episodes: zero-shot must agree episode by episode, the second file's other rows (its own
    fine-tuning too, with --shared) join under ROW:NAME, costs per new task with them; a file of other
    episodes is refused."""
    import importlib.util
    import json
    from pathlib import Path

    import pytest

    from metalm.cli import main

    world = make_world(tmp_path, max_steps=2, val_every=0)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    run = tmp_path / "run"
    MetaTrainer(load_train_config(world["config"]), run).train(progress=False)
    common = ["--shots", "1", "--episodes", "3", "--ways", "2", "--queries", "1", "--quiet", "cost_episodes=1",
              "finetune_optimizers=[sgd]", "finetune_lrs=[0.3]", "finetune_steps=[2]"]
    base, other = tmp_path / "baselines.json", tmp_path / "family.json"
    config = yaml.safe_load(world["config"].read_text())
    assert main(["eval", "--model", config["model"], "--split", config["split"], "--task-dir", config["task_dirs"][0],
                 "--methods", "zeroshot,icl,finetune", "--json", str(base), *common]) == 0
    assert main(["eval", "--run-dir", str(run), "--methods", "zeroshot,finetune,meta", "--json", str(other),
                 *common]) == 0
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fewshot" / "merge_rows.py"
    spec = importlib.util.spec_from_file_location("merge_rows", path)
    merge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge)
    merged = tmp_path / "merged.json"
    merge.main([str(base), str(other), "--shared", "zeroshot", "--json", str(merged)])
    report = json.loads(merged.read_text())
    first, second = json.loads(base.read_text()), json.loads(other.read_text())
    own = {r["method"] for r in second["macro"]} - {"zeroshot"}
    assert {"meta", "finetune"} <= own
    assert {r["method"] for r in report["macro"]} == {"zeroshot", "icl", "finetune"} | {f"{m}:family" for m in own}
    for key, accs in second["per_episode"].items():
        method, rest = key.split("|", 1)
        assert report["per_episode"][key if method == "zeroshot" else f"{method}:family|{rest}"] == accs
    assert report["episode_cost"]["meta:family"] == second["episode_cost"]["meta"]
    assert report["episode_cost"]["zeroshot"] == first["episode_cost"]["zeroshot"]
    assert main(["report", str(merged)]) == 0 and (tmp_path / "merged_report" / "accuracy_vs_cost.png").is_file()
    second["per_episode"] = {k: [[a + 0.25 for a in seed] for seed in v] for k, v in second["per_episode"].items()}
    other.write_text(json.dumps(second))
    with pytest.raises(SystemExit, match="per-episode accuracies differ"):
        merge.main([str(base), str(other), "--shared", "zeroshot"])
    capsys.readouterr()


def test_eval_bf16_pairs_the_journaled_blocks_by_hand(tmp_path):
    """``benchmarks/fewshot/eval_bf16.py``'s summary: per shot count and row, bf16 - float32 over the
    episodes of every block (one flipped episode of four: -0.25 / 4), the share alike and the
    float32-alone check against the table's first episode, all by hand."""
    import importlib.util
    import json
    from pathlib import Path

    import pytest

    from metalm.eval.journal import Journal

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fewshot" / "eval_bf16.py"
    spec = importlib.util.spec_from_file_location("eval_bf16", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    reference = Journal(tmp_path / "ref.jsonl", {"eval": "x"}, resume=False)
    reference.put("a/4/0", {"icl": [1.0, 0.5]})
    reference.put("b/4/0", {"icl": [0.0, 0.5]})
    lines = {"a/4/0": {"key": "a/4/0", "rows": {"icl": [1.0, 0.25]},
                       "alone": {"float32": {"icl": [2.0, 1.0]}, "bf16": {"icl": [1.0, 1.0]}}},
             "b/4/0": {"key": "b/4/0", "rows": {"icl": [0.0, 0.5]},
                       "alone": {"float32": {"icl": [4.0, 0.5]}, "bf16": {"icl": [1.0, 0.0]}}}}
    row = mod.summarize(lines, reference)["4"]["rows"]["icl"]
    assert row["paired"]["diff"] == pytest.approx(-0.25 / 4) and row["alike"] == 0.75
    assert row["float32"] == pytest.approx(0.5) and row["bf16"] == pytest.approx(1.75 / 4)
    assert row["seconds_alone"] == {"float32": 3.0, "bf16": 1.0} and row["speedup_alone"] == 3.0
    assert row["float32_alone_equals_table"] == 1  # b's float32 episode alone (0.5) is not the table's (0.0)
    (tmp_path / "log.jsonl").write_text(json.dumps(lines["a/4/0"]) + '\n{"key": "b/4', encoding="utf-8")
    assert list(mod.read_lines(tmp_path / "log.jsonl")) == ["a/4/0"]  # a torn last line is dropped


def test_the_cli_and_metalm_evaluate_with_the_same_protocol_give_the_same_report(tmp_path, monkeypatch, capsys):
    """`metalm eval --protocol P` and `metalm.evaluate(protocol=P)`: one recipe, the same JSON (timings
    aside); a keyword overrides the protocol's value; EvalConfig() with a run of any kind is accepted."""
    import json

    import pytest

    import metalm
    from metalm.cli import main
    from metalm.errors import ConfigError

    world = make_world(tmp_path, max_steps=1, val_every=0, checkpoint_every=1)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    run = tmp_path / "run"
    MetaTrainer(load_train_config(world["config"]), run).train(progress=False)
    protocol = tmp_path / "p.yaml"
    protocol.write_text(yaml.safe_dump({"description": "t", "tasks": ["toy_cls", "toy_mc"], "shots": [1],
                                        "episodes": 2, "ways": 2, "queries": 1, "methods": ["zeroshot", "icl", "meta"]}))
    assert main(["eval", "--run-dir", str(run), "--protocol", str(protocol), "--json", str(tmp_path / "cli.json"),
                 "--quiet"]) == 0
    capsys.readouterr()
    ours = metalm.evaluate(runs=[run], protocol=protocol, output=tmp_path / "py.json", progress=False, log=None)
    cli = json.loads((tmp_path / "cli.json").read_text())
    assert json.loads((run / "eval.json").read_text())["per_episode"] == cli["per_episode"]  # the run keeps a copy
    timing = {"adaptation_cost", "measuring_seconds", "episode_cost", "episode_cost_seconds"}
    assert {k: v for k, v in cli.items() if k not in timing} == {k: v for k, v in ours.items() if k not in timing}
    assert ours["eval_config"]["shots"] == [1] and ours["eval_config"]["episodes"] == 2  # the protocol's values
    more = metalm.evaluate(runs=[run], protocol=protocol, episodes=3, progress=False, log=None)
    assert more["eval_config"]["episodes"] == 3 and more["protocol"]["values"]["episodes"] == 3  # protocol < keyword
    with pytest.raises(ConfigError, match="not both"):
        metalm.evaluate(metalm.eval.EvalConfig(), runs=[run], protocol=protocol, log=None)
    plain = metalm.evaluate(metalm.eval.EvalConfig(shots=[1], episodes=1, ways=2, queries=1,
                                                   finetune_steps=[1], finetune_lrs=[0.1], finetune_adam_lrs=[0.01],
                                                   val_episodes=1),
                            runs=[run], tasks=["toy_cls"], progress=False, log=None)
    assert "meta" not in {r["method"] for r in plain["results"]}  # EvalConfig's default: the baselines


def test_rows_scores_only_the_named_rows_with_the_same_accuracies(tmp_path, monkeypatch):
    """``rows``: the named rows alone, each with the per-episode accuracies it has among all the rows (its
    twin left out: a calibrated row adapts on its own); a name no row has is refused before measuring."""
    import pytest

    from metalm.errors import ConfigError

    world = make_world(tmp_path, max_steps=2, val_every=0, checkpoint_every=1)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    MetaTrainer(load_train_config(world["config"]), tmp_path / "a").train(progress=False)
    base = dict(shots=[2], episodes=2, ways=2, queries=2, methods=["zeroshot", "meta"], calibrate_trained=True)
    every = evaluate(EvalConfig(**base), runs=[tmp_path / "a"], progress=False, log=None)
    some = evaluate(EvalConfig(**base, rows=["meta-cal"]), runs=[tmp_path / "a"], progress=False, log=None)
    assert {r["method"] for r in every["macro"]} == {"zeroshot", "meta", "meta-cal"}
    assert {r["method"] for r in some["macro"]} == {"meta-cal"}
    assert {k: v for k, v in every["per_episode"].items() if k.startswith("meta-cal|")} == some["per_episode"]
    with pytest.raises(ConfigError, match="no row is named 'mtl'.*the rows: zeroshot, meta, meta-cal"):
        evaluate(EvalConfig(**base, rows=["mtl"]), runs=[tmp_path / "a"], progress=False, log=None)
    with pytest.raises(ConfigError, match="rows"):
        EvalConfig(**base, rows=[])


def test_shards_side_by_side_then_the_unsharded_run_write_the_report_of_one_process(tmp_path, monkeypatch):
    """``--shard I/N``: each of two processes measures its half of the blocks (none twice), journaled apart;
    the run without a shard measures nothing more, writes the report an unsharded run writes (the same
    per-episode accuracies, fine-tuning's budget and the rows' costs alone) and deletes every journal."""
    import pytest

    from metalm.errors import ConfigError
    from metalm.eval.fewshot import Harness

    world = make_world(tmp_path)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    cfg = yaml.safe_load(world["config"].read_text())
    where = dict(model=cfg["model"], split=cfg["split"], task_dirs=cfg["task_dirs"], progress=False, log=None)
    config = EvalConfig(shots=[1, 2], episodes=2, seeds=2, ways=2, queries=1, methods=["zeroshot", "icl", "finetune"],
                        finetune_optimizers=["sgd"], finetune_lrs=[0.3, 1.0], finetune_steps=[1], val_episodes=1,
                        cost_episodes=1)
    whole = evaluate(config, output=tmp_path / "whole.json", **where)
    measured: list[str] = []
    block = Harness.block
    monkeypatch.setattr(Harness, "block", lambda self, rows, eps: measured.append(eps[0].task) or block(self, rows, eps))
    out = tmp_path / "sharded.json"
    total = len(whole["tasks"]) * 2 * 2
    first = evaluate(config, output=out, shard=(0, 2), **where)
    assert len(measured) == (total + 1) // 2 and first["missing"] == total - len(measured)
    assert not out.exists() and first["journal"] == str(tmp_path / "sharded.json.partial.shard-0.jsonl")
    second = evaluate(config, output=out, shard=(1, 2), **where)
    assert len(measured) == total and second["missing"] == 0  # none measured twice
    report = evaluate(config, output=out, resume=True, **where)
    assert len(measured) == total  # the report's run read every block back
    assert report["per_episode"] == whole["per_episode"] and report["finetune"] == whole["finetune"]
    assert set(report["episode_cost"]) == set(whole["episode_cost"])
    assert not list(tmp_path.glob("sharded.json.partial*"))  # every shard's journal deleted with the report
    for bad in ((2, 2), (-1, 2), (0, 0), (0.5, 2), "0/2"):
        with pytest.raises(ConfigError, match="I/N") as err:
            evaluate(config, output=out, shard=bad, **where)
        assert err.value.field == "--shard"
    with pytest.raises(ConfigError, match="give --json"):
        evaluate(config, shard=(0, 2), **where)
    from metalm.eval.recipe import parse_shard  # the command line's --shard I/N

    assert parse_shard("1/2") == (1, 2)
    for bad in ("1", "a/2", "2/2", "1/2/3"):
        with pytest.raises(ConfigError, match="I/N"):
            parse_shard(bad)


def test_the_benchmark_jobs_sharded_evaluation_writes_the_report_of_one_process(tmp_path, monkeypatch):
    """benchmarks/fewshot/eval.sh with SHARDS=2 (two one-thread shards, then the report's run), as the
    baseline table, the curves and the comparison run it: the report an unsharded evaluation writes."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    world = make_world(tmp_path)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    cfg = yaml.safe_load(world["config"].read_text())
    args = ["--model", cfg["model"], "--split", cfg["split"], "--task-dir", cfg["task_dirs"][0], "--shots", "1,2",
            "--episodes", "2", "--seeds", "2", "--ways", "2", "--queries", "1", "--methods", "zeroshot,icl",
            "--resume", "--quiet"]
    whole = evaluate(EvalConfig(shots=[1, 2], episodes=2, seeds=2, ways=2, queries=1, methods=["zeroshot", "icl"]),
                     model=cfg["model"], split=cfg["split"], task_dirs=cfg["task_dirs"], progress=False, log=None)
    root = Path(__file__).resolve().parents[1]
    env = {**world["env"], "SHARDS": "2", "BIN": str(Path(sys.executable).parent)}
    done = subprocess.run(["bash", str(root / "benchmarks" / "fewshot" / "eval.sh"), *args, "--json",
                           str(tmp_path / "r.json")], env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("blocks not yet journaled by any shard") == 2  # each shard said where it stands
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["per_episode"] == whole["per_episode"]
    assert not [p for p in os.listdir(tmp_path) if ".partial" in p]
