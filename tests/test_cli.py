"""The `metalm` command line: tasks, download and one-line errors."""

import pytest

from metalm.cli import main, parse_overrides
from metalm.data import default_registry
from metalm.errors import ConfigError

from .data.test_shipped import needs_split


@pytest.fixture(autouse=True)
def fresh_registry():
    # default_registry() is cached with whatever task data earlier tests loaded.
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()


def test_tasks_list_without_data_says_what_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METALM_HOME", str(tmp_path))
    assert main(["tasks", "list", "--split", "smoke", "--sizes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["task", "type", "metric", "data"] and len(out) == 1 + 7 + 1
    assert all("metalm download bigbench" in line for line in out[1:-1])
    assert out[-1] == "# 7 tasks from 1 data sets"
    assert main(["tasks", "list", "--split", "pool", "--sizes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum("metalm download pool" in line for line in out) >= 130 and out[-1].endswith("from 11 data sets")


def test_tasks_show_unknown_task_is_a_one_line_error(capsys):
    assert main(["tasks", "show", "navigat"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metalm: error: tasks: unknown task 'navigat'; did you mean navigate") and "\n" not in err


def test_tasks_show_names_the_missing_download(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METALM_HOME", str(tmp_path))
    assert main(["tasks", "show", "bbc_news"]) == 2
    assert "run `metalm download bbc-news`" in capsys.readouterr().err


def test_tasks_list_names_the_pool_from_its_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METALM_HOME", str(tmp_path))  # no data: the list needs none
    assert main(["tasks", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 + len(default_registry()) and len(default_registry()) >= 150
    assert lines[-1] == f"# {len(default_registry())} tasks; --sizes loads their data for sizes and class counts"
    row = next(line.split() for line in lines if line.startswith("abstract_narrative_understanding.4_distractors "))
    assert row[1:3] == ["multiple_choice", "996"]  # 1,000 examples less 4 queries


@needs_split("default")
def test_tasks_list_and_show_with_data(capsys):
    assert main(["tasks", "list", "--split", "default", "--sizes"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1 + 61
    assert "bbc_news" in out and "5: business, entertainment, politics, sports, tech" in out
    assert main(["tasks", "show", "intent_recognition"]) == 0
    out = capsys.readouterr().out
    assert "name: intent_recognition" in out and "Intent:\u2588 " in out and "# options:" in out


def test_overrides():
    assert parse_overrides(["a.b=3", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 3, "c": "x"}, "d": [1, 2]}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])
    with pytest.raises(ConfigError, match="both a value and a section"):
        parse_overrides(["a=1", "a.b=2"])


def test_own_tasks_from_a_folder_the_environment_and_a_named_split(tmp_path, monkeypatch, capsys):
    from metalm.data import default_registry, load_split

    assert main(["tasks", "new", "mine", "--dir", str(tmp_path / "t")]) == 0
    assert main(["tasks", "new", "mine", "--dir", str(tmp_path / "t")]) == 2  # never overwrites
    for kind in ("multiple_choice", "generation"):
        assert main(["tasks", "new", f"mine_{kind}", "--type", kind, "--dir", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    for name in ("mine", "mine_multiple_choice", "mine_generation"):  # a file is validated and rendered
        assert main(["tasks", "show", str(tmp_path / "t" / f"{name}.yaml")]) == 0
        assert "# one rendered example" in capsys.readouterr().out
    assert main(["tasks", "show", "mine", "--task-dir", str(tmp_path / "t")]) == 0
    assert main(["tasks", "show", "mine"]) == 2  # not on the path
    monkeypatch.setenv("METALM_TASK_PATH", str(tmp_path / "t"))
    capsys.readouterr()
    assert main(["tasks", "list"]) == 0 and "mine_generation" in capsys.readouterr().out
    (tmp_path / "t" / "splits").mkdir()
    (tmp_path / "t" / "splits" / "own.yaml").write_text(
        "name: own\nmeta_train: [mine]\nmeta_val: [mine_generation]\nmeta_test: [mine_multiple_choice]\n")
    assert load_split("own", default_registry()).meta_test == ["mine_multiple_choice"]
    (tmp_path / "t" / "bad.yaml").write_text("name: bad\ntype: classification\nlabels: [yes, no]\n")
    assert main(["tasks", "show", str(tmp_path / "t" / "bad.yaml")]) == 2
    assert "quote it" in capsys.readouterr().err


def test_every_config_key_has_help_and_is_discoverable(capsys):
    import dataclasses

    from metalm.algorithms import algorithm_config, algorithm_names
    from metalm.config import describe
    from metalm.eval import EvalConfig
    from metalm.run import TrainConfig

    configs = [TrainConfig, EvalConfig, *(algorithm_config(n, {}) for n in algorithm_names())]
    undocumented = [k for c in configs for k, _, text in describe(c) if not text]
    assert not undocumented, undocumented
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "metalm config show" in help_text
    assert all(f.name in help_text for f in dataclasses.fields(TrainConfig))  # the epilog names every section
    assert main(["config", "show", "--algorithm", "maml"]) == 0
    out = capsys.readouterr().out
    assert "outer.lr = 0.001" in out and "algorithm.inner.steps = " in out and "max_nonfinite_steps = 3" in out
    assert main(["config", "show", "--eval"]) == 0 and "finetune_steps = " in capsys.readouterr().out
