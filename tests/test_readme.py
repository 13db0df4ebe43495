"""The README's example code runs as written, and the CLI example works end to end."""

import json
import re
from pathlib import Path

import pytest

from metalm.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README lost its Python example"
    assert len(blocks[0].strip().splitlines()) <= 16
    exec(compile(blocks[0], str(README), "exec"), {})
    assert "query_loss" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_demo_learns_held_out_tasks(tmp_path):
    out = tmp_path / "demo.json"
    assert main(["demo", "outer_steps=150", "eval_episodes=20", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["accuracy_after"] > result["accuracy_before"] + 0.3
    assert result["accuracy_after"] > 2 * result["chance"]


def test_cli_errors_are_one_line_and_exit_2(capsys):
    assert main(["demo", "inner.lr=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metalm: error: command line: inner.lr: must be > 0")
    assert "\n" not in err
    assert main(["demo", "novalue"]) == 2
