"""scripts/generate_bigbench_tasks.py on a small BIG-bench tree: the pool rule, max_shots, and files that load."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from metalm.data import EpisodeSampler, SamplerConfig, Task, load_task_file

ROOT = Path(__file__).resolve().parents[2]


def _generator():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("generate_bigbench_tasks", ROOT / "scripts/generate_bigbench_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_validate_and_render(home, tmp_path):
    bb = home / "data" / "bigbench"
    many = {"input": "pick", "target_scores": {f"o{i}": int(i == 0) for i in range(25)}}
    extra = {"wide": {"examples": [many] * 10},  # 25 options: left out
             "rouge_gen": {"metrics": ["rouge"], "examples": [{"input": "a", "target": "b"}] * 10},
             "blank": {"examples": [{"input": " ", "target_scores": {"a": 1, "b": 0}}] * 10},
             "aggregate": {"examples": []}}
    for name, body in extra.items():
        (bb / name).mkdir()
        (bb / name / "task.json").write_text(json.dumps({"canary": ["CANARY", "TWO"], **body}), encoding="utf-8")
    (bb / "toy_gen" / "task.json").write_text(json.dumps(
        {**json.loads((bb / "toy_gen" / "task.json").read_text()), "metrics": ["exact_str_match"]}))
    out = tmp_path / "out"
    _generator().main(bb, out, require_curated=False)
    names = sorted(p.stem for p in out.glob("*.yaml"))
    assert names == ["toy_cls", "toy_gen", "toy_mc"]
    pool = (out / "POOL.md").read_text()
    for task, why in [("wide", "more than 20 options (25)"), ("rouge_gen", "generation not scored by exact match (rouge)"),
                      ("blank", "every example has an empty input"), ("aggregate", "no examples in task.json"),
                      ("small", "fewer than 1 shot + 4 queries per class")]:  # 3 examples of class "a"
        assert f"| {task} | {why} |" in pool
    specs = {n: load_task_file(out / f"{n}.yaml") for n in names}
    assert specs["toy_cls"].type == "classification" and specs["toy_cls"].labels == ["yes", "no", "maybe"]
    assert specs["toy_mc"].type == "multiple_choice" and specs["toy_gen"].type == "generation"
    # max_shots: the smallest class's examples (or all examples) less 4 queries
    assert specs["toy_cls"].max_shots == 12 - 4 and specs["toy_mc"].max_shots == 24 - 4
    assert specs["toy_gen"].max_shots == 12 - 4 and specs["toy_cls"].canary == "CANARY"
    for name in ("toy_cls", "toy_mc", "toy_gen"):
        task = Task(specs[name], str(out / f"{name}.yaml"))
        episode = EpisodeSampler([task], SamplerConfig(ways=2, shots=specs[name].max_shots, queries=4)).sample()
        assert episode.support[0].prompt.strip() and episode.support[0].answer.strip()
