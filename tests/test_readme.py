"""The README's example code runs as written, and the CLI example works end to end."""

import ast
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
    *setup, last = blocks[0].strip().splitlines()
    assert last.startswith("print(maml.step(tasks.episodes(4, 4, 4, gen), opt))")
    ns: dict = {}
    exec(compile("\n".join(setup), str(README), "exec"), ns)
    # By hand, before the step: each task's query loss after 3 SGD steps at lr 0.3 from the initialization.
    import torch

    import metalm

    gen = torch.Generator().manual_seed(0)
    gen.set_state(ns["gen"].get_state())
    fast = ns["sel"].fast_params(ns["model"])
    by_hand = [metalm.lm_loss(ns["model"], metalm.adapt(ns["model"], fast, ep.support, steps=3, lr=0.3), ep.query).item()
               for ep in ns["tasks"].episodes(4, 4, 4, gen)]
    capsys.readouterr()
    exec(compile(last, str(README), "exec"), ns)
    printed = ast.literal_eval(capsys.readouterr().out.strip())
    # The same computation in float32 by another path (vmapped / batched inside maml.step): equal to rounding.
    assert printed["query_loss"] == pytest.approx(sum(by_hand) / 4, rel=1e-5)
    assert printed["skipped"] == 0.0


@pytest.mark.slow
@pytest.mark.learning
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


@pytest.mark.realmodel
@pytest.mark.skipif(not (__import__("metalm.hub").hub.model_dir("smollm2-135m") / "manifest.json").is_file(),
                    reason="run `metalm download smollm2-135m` first")
def test_readme_own_task_example_runs_as_printed(tmp_path, monkeypatch, capsys):
    import shlex

    text = README.read_text(encoding="utf-8")
    files = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, re.S)
    assert [name for name, _ in files] == ["mytasks/animals.yaml", "mytasks/animals.jsonl", "mine.yaml"]
    for name, body in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body, encoding="utf-8")
    commands = re.search(r"<!-- commands: own task -->\n```bash\n(.*?)```", text, re.S).group(1).splitlines()
    monkeypatch.chdir(tmp_path)
    for line in commands:
        argv = shlex.split(line)
        assert argv[0] == "metalm" and main(argv[1:]) == 0, line
    out = capsys.readouterr().out
    assert "Is it an animal?" in out and "| zeroshot |" in out and "| icl |" in out
    assert (tmp_path / "runs" / "mine" / "checkpoints" / "step-0000002").is_dir()
