"""Task definitions and sources: valid data loads into canonical columns, bad input raises TaskError."""

import json

import datasets
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metalm.data import TaskRegistry, load_split, load_task_file, parse_task
from metalm.data.registry import Split, Task
from metalm.errors import DataNotFoundError, TaskError

from .fixtures import SPECS

VALID = {"name": "t", **SPECS["toy_cls"]}


def write(tmp_path, name, data) -> str:
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return str(path)


def test_bigbench_sources_give_canonical_columns(registry):
    cls = registry["toy_cls"]
    assert cls.class_counts() == {"yes": 12, "no": 12, "maybe": 12}
    assert cls.data[0]["label"] == "yes"
    mc = registry["toy_mc"].data
    assert mc[1]["options"] == ["river-0", "river-1", "river-2"] and mc[1]["label"] == 1
    gen = registry["toy_gen"].data
    assert gen[0]["target"] == "elppa" and gen[0]["references"] == ["elppa", "ELPPA"]


def test_bbc_labels_come_from_folder_names(registry):
    news = registry["news"].data
    for row in news:
        assert row["id"].split("/")[0] == row["label"]
        assert row["title"].lower().startswith(row["label"])
    assert registry["news"].class_counts() == {"business": 10, "sports": 10, "tech": 10}


def test_shakespeare_chunks_on_line_boundaries(registry):
    plays = registry["plays"].data
    assert set(plays["play"]) == {"hamlet", "tempest"}
    assert all(len(t) <= 200 for t in plays["text"])
    assert all(t.split("\n")[0].startswith(("HAMLET.", "TEMPEST.")) for t in plays["text"])
    full = "\n".join(plays.filter(lambda r: r["play"] == "hamlet")["text"])
    assert full.count("HAMLET.") == 200


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_local_files(tmp_path, home, fmt):
    rows = [{"text": f"row {i}", "label": "pos" if i % 2 else "neg"} for i in range(10)]
    path = tmp_path / f"data.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        path.write_text("text,label\n" + "\n".join(f"{r['text']},{r['label']}" for r in rows))
    spec = write(tmp_path, "local", {"name": "local", "type": "classification", "labels": ["neg", "pos"],
                                      "source": {"kind": fmt, "path": path.name}, "template": "{{ text }}"})
    task = Task(load_task_file(spec), spec)
    assert task.class_counts() == {"neg": 5, "pos": 5}


def test_datasets_sources(tmp_path, home):
    ds = datasets.Dataset.from_dict({"sentence": [f"s{i}" for i in range(8)], "label": [0, 1] * 4})
    ds.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps({"q": f"q{i}", "a": f"a{i}"}) for i in range(6)))
    disk = write(tmp_path, "disk", {"name": "disk", "type": "classification", "labels": ["neg", "pos"],
                                    "source": {"kind": "disk", "path": "saved"}, "template": "{{ sentence }}"})
    assert Task(load_task_file(disk), disk).class_counts() == {"neg": 4, "pos": 4}  # int labels index `labels`
    files = write(tmp_path, "files", {"name": "files", "type": "generation", "target_field": "a",
                                      "metric": "exact_match", "template": "{{ q }}",
                                      "source": {"kind": "hf", "name": "json", "data_files": ["rows.jsonl"]}})
    assert Task(load_task_file(files), files).data[2]["target"] == "a2"
    hub = write(tmp_path, "hub", {"name": "hub", "type": "generation", "template": "{{ q }}",
                                  "metric": "exact_match", "source": {"kind": "hf", "name": str(tmp_path / "nope")}})
    with pytest.raises(TaskError, match="source.name"):
        Task(load_task_file(hub), hub).data


def test_missing_cache_names_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("METALM_HOME", str(tmp_path / "empty"))
    task = Task(parse_task({"name": "b", **SPECS["toy_mc"]}))
    with pytest.raises(DataNotFoundError, match="metalm download bigbench"):
        task.data


def test_uncached_bigbench_task_names_the_tasks_flag(home):
    task = Task(parse_task({"name": "b", **SPECS["toy_mc"], "source": {"kind": "bigbench", "task": "navigate"}}))
    with pytest.raises(DataNotFoundError, match="--tasks navigate"):
        task.data


@pytest.mark.parametrize("change, field, message", [
    ({"name": None}, "name", "required field is missing"),
    ({"name": 3}, "name", "expected str"),
    ({"nmae": "x"}, "nmae", "unknown field"),
    ({"type": "regression"}, "type", "not one of"),
    ({"source": {"kind": "ftp"}}, "source.kind", "not one of"),
    ({"source": {"kind": "bigbench"}}, "source.task", "required"),
    ({"source": {"kind": "json"}}, "source.path", "required"),
    ({"labels": ["yes"]}, "labels", "at least 2"),
    ({"labels": ["a", "a"]}, "labels", "distinct"),
    ({"verbalizers": {"perhaps": "x"}}, "verbalizers", "not one of the labels"),
    ({"verbalizers": {"yes": "no"}}, "verbalizers", "distinct"),
    ({"metric": "bleu"}, "metric", "not one of"),
    ({"metric": "exact_match"}, "metric", "does not fit"),
    ({"name": "Bad Name"}, "name", "lower case"),
    ({"template": "{{ input "}, "template", "syntax"),
    ({"source": {"kind": "csv", "path": "x.csv", "fallback_encoding": "klingon"}}, "source.fallback_encoding", "unknown"),
])
def test_bad_definitions_name_file_and_field(tmp_path, change, field, message):
    data = {**VALID, **change}
    data = {k: v for k, v in data.items() if v is not None}
    path = write(tmp_path, "bad", data)
    with pytest.raises(TaskError, match=message) as err:
        load_task_file(path)
    assert err.value.field == field and err.value.source == path
    assert str(err.value).startswith(f"{path}: {field}: ")


def test_unreadable_files(tmp_path):
    path = write(tmp_path, "broken", "name: [unclosed\n")
    with pytest.raises(TaskError, match="malformed YAML"):
        load_task_file(path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe caf\xe9\n")
    with pytest.raises(TaskError, match="not UTF-8"):
        load_task_file(binary)
    with pytest.raises(TaskError, match="cannot read"):
        load_task_file(tmp_path / "absent.yaml")
    empty = write(tmp_path, "empty", "")
    with pytest.raises(TaskError, match="expected a mapping"):
        load_task_file(empty)


def test_templates_cannot_reach_python_internals(registry, tmp_path, home):
    for template in ("{{ input.__class__.__mro__ }}", "{{ ''.__class__.__base__.__subclasses__() }}",
                     "{{ cycler.__init__.__globals__ }}", "{% set x = options.append(1) %}{{ x }}"):
        spec = write(tmp_path, "evil", {**VALID, "name": "evil", "template": template})
        task = Task(load_task_file(spec), spec)
        from metalm.data import EpisodeSampler, SamplerConfig

        with pytest.raises(TaskError, match="template") as err:
            EpisodeSampler([task], SamplerConfig(ways=2, shots=1, queries=1)).sample()
        assert err.value.source == spec


@pytest.mark.parametrize("template, message", [
    ("{{ 1/0 }}", "ZeroDivisionError"),
    ("{{ range(10**9)|list }}", "argument above"),
    ("{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(1) }}", "recursion too deep"),
    ("{{ 2 ** (10 ** 9) }}", "power of more than"),
    ("{{ input * 10**6 }}", "repetition"),
    ("{{ input.ljust(10**9) }}", "argument above"),
    ("{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}{% endfor %}", "loops exceed"),
    ("{% for i in range(10**4) %}{{ input * 200 }}{% endfor %}", "output exceeds"),
])
def test_templates_are_bounded(tmp_path, home, template, message):
    spec = write(tmp_path, "big", {**VALID, "name": "big", "template": template})
    task = Task(load_task_file(spec), spec)
    from metalm.data import EpisodeSampler, SamplerConfig

    with pytest.raises(TaskError, match=message) as err:
        EpisodeSampler([task], SamplerConfig(ways=2, shots=1, queries=1)).sample()
    assert err.value.source == spec and err.value.field == "template"


def test_an_empty_template_is_an_error(tmp_path):
    spec = write(tmp_path, "empty", {**VALID, "name": "empty", "template": "  "})
    with pytest.raises(TaskError, match="template: is empty") as err:
        load_task_file(spec)
    assert err.value.source == spec


def test_template_variables_must_exist(tmp_path, home):
    spec = write(tmp_path, "undef", {**VALID, "name": "undef", "template": "{{ question }}"})
    with pytest.raises(TaskError, match="uses 'question'") as err:
        Task(load_task_file(spec), spec).data
    assert err.value.field == "template"


def test_empty_text_and_non_utf8_data(tmp_path, home):
    (tmp_path / "rows.jsonl").write_text('{"text": "fine", "label": "a"}\n{"text": "  ", "label": "b"}\n')
    base = {"name": "e", "type": "classification", "labels": ["a", "b"], "template": "{{ text }}",
            "source": {"kind": "jsonl", "path": "rows.jsonl"}}
    spec = write(tmp_path, "e", base)
    with pytest.raises(TaskError, match="example 1 has empty text in 'text'") as err:
        Task(load_task_file(spec), spec).data
    assert err.value.source == spec
    spec = write(tmp_path, "e2", {**base, "drop_empty": True})
    assert len(Task(load_task_file(spec), spec).data) == 1
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9,a\nbar,b\n".encode("latin-1"))
    spec = write(tmp_path, "l", {**base, "source": {"kind": "csv", "path": "latin.csv"}})
    with pytest.raises(TaskError, match="not UTF-8") as err:
        Task(load_task_file(spec), spec).data
    assert err.value.field == "source.path"
    spec = write(tmp_path, "l2", {**base, "source": {"kind": "csv", "path": "latin.csv", "fallback_encoding": "latin-1"}})
    assert Task(load_task_file(spec), spec).data[0]["text"] == "café"


@pytest.mark.parametrize("kind, row, field, message", [
    ("generation", {"text": "a", "target": {"k": 1}}, "target", "expected text or a number, got dict"),
    ("generation", {"text": "a", "target": None}, "target_field", "empty text in 'target'"),
    ("multiple_choice", {"text": "a", "choices": "abc", "answer": 1}, "choices", "expected a list of options"),
    ("multiple_choice", {"text": "a", "choices": ["x", "y"], "answer": 1.7}, "answer", "index of the correct option"),
    ("multiple_choice", {"text": "a", "choices": ["x", "y"], "answer": True}, "answer", "index of the correct option"),
    ("multiple_choice", {"text": "a", "choices": ["x", " "], "answer": 0}, "choices", "example 0 has an empty option"),
    ("language_modeling", {"text": {"a": 1}}, "text", "expected text or a number, got dict"),
    ("classification", {"text": {"a": 1}, "label": "yes"}, "template", "'text', whose values are mappings"),
    ("classification", {"text": None, "label": "yes"}, "text", "empty text in 'text'"),
])
def test_data_values_of_the_wrong_type_are_errors(tmp_path, home, kind, row, field, message):
    (tmp_path / "rows.jsonl").write_text((json.dumps(row) + "\n") * 4)
    extra = {"generation": {"metric": "exact_match"}, "language_modeling": {"metric": "perplexity"},
             "multiple_choice": {"options_field": "choices", "target_field": "answer"},
             "classification": {"labels": ["yes", "no"]}}[kind]
    spec = write(tmp_path, "w", {"name": "w", "type": kind, "template": "{{ text }}",
                                 "source": {"kind": "jsonl", "path": "rows.jsonl"}, **extra})
    with pytest.raises(TaskError, match=message) as err:
        Task(load_task_file(spec), spec).data
    assert err.value.source == spec and err.value.field == field


@pytest.mark.parametrize("kind, text, field, message", [
    ("csv", "text,label\na,yes\nb,no,extra\n", "source.path", "row 2 has more fields than the header"),
    ("json", "[" * 1000 + "]" * 1000, "source.path", "RecursionError"),
    ("hf", '[{"text": "a", "label": "yes"}', "source.name", "cannot load the dataset"),
    ("hf", "[" * 1000 + "]" * 1000, "source.name", "cannot load the dataset"),
])
def test_broken_data_files_are_task_errors(tmp_path, home, kind, text, field, message):
    (tmp_path / "rows").write_text(text)
    source = {"kind": "hf", "name": "json", "data_files": ["rows"]} if kind == "hf" else {"kind": kind, "path": "rows"}
    spec = write(tmp_path, "b", {"name": "b", "type": "classification", "labels": ["yes", "no"],
                                 "template": "{{ text }}", "source": source})
    with pytest.raises(TaskError, match=message) as err:
        Task(load_task_file(spec), spec).data
    assert err.value.field == field


def test_drop_empty_skips_examples_with_an_empty_option(tmp_path, home):
    rows = [{"q": "a", "choices": ["x", "y"], "answer": 0}, {"q": "b", "choices": ["x", ""], "answer": 1}] * 3
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = write(tmp_path, "m", {"name": "m", "type": "multiple_choice", "template": "{{ q }}", "drop_empty": True,
                                 "options_field": "choices", "target_field": "answer",
                                 "source": {"kind": "jsonl", "path": "rows.jsonl"}})
    assert Task(load_task_file(spec), spec).data["q"] == ["a", "a", "a"]


def test_lists_and_numbers_are_answers(tmp_path, home):
    refs = []
    for i, target in enumerate((["x", "y"], 12)):
        (tmp_path / f"rows{i}.jsonl").write_text(json.dumps({"text": "a", "target": target}) + "\n")
        spec = write(tmp_path, f"g{i}", {"name": f"g{i}", "type": "generation", "template": "{{ text }}",
                                         "metric": "exact_match", "source": {"kind": "jsonl", "path": f"rows{i}.jsonl"}})
        row = Task(load_task_file(spec), spec).data[0]
        refs.append((row["target"], row["references"]))
    assert refs == [("x", ["x", "y"]), ("12", ["12"])]


def test_labels_must_cover_the_data(tmp_path, home):
    spec = write(tmp_path, "l", {**VALID, "labels": ["yes", "no"], "verbalizers": None})
    with pytest.raises(TaskError, match="label 'maybe' not in labels"):
        Task(load_task_file(spec), spec).data


def test_registry_rejects_duplicates_and_unknown_names(tmp_path, home):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write(tmp_path / "a", "one", VALID)
    write(tmp_path / "b", "two", VALID)
    with pytest.raises(TaskError, match="duplicate task name 't'") as err:
        TaskRegistry.from_dirs(tmp_path)
    assert "one.yaml" in str(err.value) and "two.yaml" in str(err.value)
    registry = TaskRegistry.from_dirs(tmp_path / "a")
    with pytest.raises(TaskError, match="unknown task 'x'"):
        registry["x"]


def test_splits(registry, tmp_path):
    split = load_split(tmp_path / "tasks" / "splits" / "toy.yaml", registry)
    assert split.meta_test == ["news"]
    bad = {"name": "s", "meta_train": ["toy_cls"], "meta_val": ["toy_gen"], "meta_test": ["toy_cls"]}
    for data, field, message in [
        (bad, "meta_test", "also in meta_train"),
        ({**bad, "meta_test": []}, "meta_test", "is empty"),
        ({**bad, "meta_test": ["nope"]}, "meta_test", "unknown task"),
        ({**bad, "meta_val": ["toy_gen", "toy_gen"]}, "meta_val", "twice"),
        ({**bad, "meta_tset": ["news"]}, "meta_tset", "unknown field"),
    ]:
        path = write(tmp_path, "split", data)
        with pytest.raises(TaskError, match=message) as err:
            load_split(path, registry)
        assert err.value.field == field and err.value.source == path
    assert Split("s", ["a"], ["b"], ["c"]).check() is not None


# Property-based: whatever is thrown at the loader, it answers with a spec or a TaskError.
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
keys = st.sampled_from(["name", "type", "source", "template", "labels", "verbalizers", "metric", "target_field",
                        "options_field", "keywords", "drop_empty", "target_prefix", "junk"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=6))
def test_loader_survives_arbitrary_definitions(data):
    try:
        parse_task(data, "fuzz.yaml")
    except TaskError as err:
        assert err.source == "fuzz.yaml" and err.field


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(VALID)), values)
def test_loader_survives_one_corrupted_field(key, value):
    try:
        parse_task({**VALID, key: value}, "fuzz.yaml")
    except TaskError as err:
        assert err.source == "fuzz.yaml" and err.field


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_loader_survives_arbitrary_yaml_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("y") / "t.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_task_file(path)
    except TaskError as err:
        assert err.source == str(path)
