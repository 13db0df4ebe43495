"""Row kinds come from the algorithm registry: a family registered here, in the test file, gets its rows
evaluated and exported with no change to metalm/eval/ or metalm/report.py."""

import json

import pytest
import yaml

from metalm.algorithms import MAML, MAMLConfig, register_algorithm
from metalm.algorithms.base import _REGISTRY, algorithms_of_row, row_kinds
from metalm.errors import ConfigError
from metalm.eval import EvalConfig, known_methods
from metalm.eval.recipe import evaluate
from metalm.report import export_run
from metalm.run import load_train_config
from metalm.train import MetaTrainer

from .data.fixtures import make_world


class Anchored(MAML):
    """A researcher's family: MAML's outer step, its own evaluation row and what its export adds."""

    row = "anchored"
    row_names_algorithm = False

    def export(self, out, base_ref):  # noqa: ANN001, ANN201
        (out / "anchor.json").write_text(json.dumps({"outer_steps": self.outer_steps, "base": base_ref}))
        return ["anchor.json"]


@pytest.fixture
def anchored():
    register_algorithm("anchored-test", MAMLConfig)(Anchored)
    try:
        yield
    finally:
        del _REGISTRY["anchored-test"]


def test_a_registered_family_is_evaluated_and_exported(tmp_path, monkeypatch, anchored):
    assert "anchored" in row_kinds() and "anchored" in known_methods()
    assert algorithms_of_row("anchored") == ["anchored-test"] and "multitask" in algorithms_of_row("mtl")
    world = make_world(tmp_path, max_steps=2, val_every=0, checkpoint_every=1)
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    config = yaml.safe_load(world["config"].read_text())
    config["algorithm"]["name"] = "anchored-test"
    (tmp_path / "anchored.yaml").write_text(yaml.safe_dump(config))
    MetaTrainer(load_train_config(tmp_path / "anchored.yaml"), tmp_path / "run").train(progress=False)

    cfg = EvalConfig(shots=[1], episodes=2, ways=2, queries=2, methods=["zeroshot", "anchored"], reference="anchored",
                     finetune_steps=[1], inner_steps=[1, 2])
    report = evaluate(cfg, runs=[tmp_path / "run"], progress=False, log=None, output=tmp_path / "eval.json")
    rows = {key.split("|", 1)[0] for key in report["per_episode"]}
    assert rows == {"zeroshot", "anchored"}
    assert set(report["reference"].values()) == {"anchored"}
    assert {p["method"] for p in report["inner_steps_sweep"]} == {"anchored"}
    default = evaluate(runs=[tmp_path / "run"], shots=[1], episodes=1, ways=2, queries=2, finetune_steps=[1],
                       progress=False, log=None, output=tmp_path / "default.json")
    assert "anchored" in default["eval_config"]["methods"]  # the run's row among the default methods

    out = export_run(tmp_path / "run", tmp_path / "export")
    assert json.loads((out / "anchor.json").read_text())["outer_steps"] == 2
    assert json.loads((out / "metalm.json").read_text())["files"] == ["anchor.json"]


def test_a_row_without_its_run_names_the_algorithms_that_give_it(tmp_path, monkeypatch, anchored):
    with pytest.raises(ConfigError, match="unknown method 'nothing'"):
        EvalConfig(methods=["zeroshot", "nothing"])
    with pytest.raises(ConfigError, match="anchored needs a run trained with algorithm: anchored-test"):
        evaluate(EvalConfig(methods=["zeroshot", "anchored"]), model="tiny", log=None, output=tmp_path / "r.json")
