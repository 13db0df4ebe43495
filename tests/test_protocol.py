"""Evaluation protocols as data: the shipped ones validate, errors name file and field, the command line wins."""

import json
from pathlib import Path

import pytest
import yaml

from metalm.cli import main
from metalm.data import load_split
from metalm.data.registry import TaskRegistry
from metalm.errors import ConfigError
from metalm.eval.protocol import load_protocol, merge

from .data.fixtures import make_world

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "tasks" / "protocols").glob("*.yaml"))


def test_the_shipped_protocols_exist():
    assert {"main", "study", "study-val", "bench"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_protocol_validates_and_its_tasks_exist(name):
    registry = TaskRegistry.from_dirs(ROOT / "tasks")
    protocol = load_protocol(name, registry)
    assert protocol.description and protocol.split
    split = load_split(protocol.split, registry)
    assert getattr(split, protocol.evaluate_on)
    assert all(t in registry for t in protocol.tasks or [])


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(("data", "field"), [
    ({"shots": [4], "episode": 3}, "episode"),      # a misspelt key
    ({"shots": [0]}, "shots"),                       # a value EvalConfig rejects
    ({"ways": "three"}, "ways"),                     # a wrong type
    ({"evaluate_on": "meta_train"}, "evaluate_on"),                    # the training tasks are never evaluated
    ({"tasks": []}, "tasks"),
    ({"split": 3}, "split"),
])
def test_a_bad_protocol_is_one_error_naming_the_file_and_field(tmp_path, data, field):
    path = write(tmp_path / "p.yaml", data)
    with pytest.raises(ConfigError) as err:
        load_protocol(path, TaskRegistry.from_dirs(ROOT / "tasks"))
    assert err.value.field == field and err.value.source == str(path)


def test_an_unknown_name_lists_the_known_protocols():
    with pytest.raises(ConfigError, match="known: .*main.*study"):
        load_protocol("no-such-protocol", TaskRegistry.from_dirs(ROOT / "tasks"))


def test_merge_lets_the_command_line_win(tmp_path):
    protocol = load_protocol(write(tmp_path / "p.yaml", {"shots": [4], "episodes": 3, "ways": 3}),
                             TaskRegistry.from_dirs(ROOT / "tasks"))
    assert merge(protocol, {"shots": [1], "queries": 2}) == {"shots": [1], "episodes": 3, "ways": 3, "queries": 2}
    assert merge(None, {"ways": 2}) == {"ways": 2}


@pytest.mark.slow
def test_eval_reads_a_protocol_by_name_and_flags_override_it(tmp_path, monkeypatch):
    world = make_world(tmp_path / "w")
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    tasks = tmp_path / "w" / "tasks"
    # A user's protocol, found by name in the --task-dir's protocols/ folder.
    write(tasks / "protocols" / "mine.yaml",
          {"description": "a user's protocol", "split": "toy", "evaluate_on": "meta_test", "shots": [2], "episodes": 2,
           "ways": 2, "queries": 1, "methods": ["zeroshot", "icl"], "max_length": 64})
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tmp_path / "w" / "model"), "--task-dir", str(tasks), "--protocol", "mine",
                 "--shots", "1", "episodes=1", "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    values = report["protocol"]["values"]
    assert report["protocol"]["name"] == "mine" and report["protocol"]["path"] == str(tasks / "protocols" / "mine.yaml")
    assert values["shots"] == [1] and values["episodes"] == 1  # the flag and the key=value win
    assert values["ways"] == 2 and values["queries"] == 1 and values["methods"] == ["zeroshot", "icl"]  # the file's
    assert values["split"] == "toy" and values["tasks"] == report["tasks"]
    assert report["tasks"] == load_split(tasks / "splits" / "toy.yaml", TaskRegistry.from_dirs(tasks)).meta_test
    assert {r["shots"] for r in report["macro"]} == {1}
    assert {r["method"] for r in report["macro"]} == {"zeroshot", "icl"}
    assert {r["episodes"] for r in report["results"]} == {1}
    # --evaluate-on overrides the protocol's list; --methods its methods.
    assert main(["eval", "--model", str(tmp_path / "w" / "model"), "--task-dir", str(tasks), "--protocol", "mine",
                 "--evaluate-on", "meta_val", "--methods", "zeroshot", "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["tasks"] == load_split(tasks / "splits" / "toy.yaml", TaskRegistry.from_dirs(tasks)).meta_val
    assert {r["method"] for r in report["macro"]} == {"zeroshot"}
    assert {r["shots"] for r in report["macro"]} == {2}
