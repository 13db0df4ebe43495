"""``metalm tasks new NAME``: a task of one's own as two files that validate as written.

``NAME.yaml`` (the definition, every field commented) and ``NAME.jsonl`` (a few rows of data to
replace). Point ``--task-dir`` (or ``task_dirs:`` in a run config, or ``$METALM_TASK_PATH``) at the
folder and the task is used like a shipped one.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

_WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "violin", "garden"]

_YAML = {
    "classification": """\
# A classification task: the model picks one of `labels` for each example (rank classification).
name: {name}
type: classification
source:
  kind: jsonl              # also json, csv, hf (datasets.load_dataset), disk (datasets.load_from_disk)
  path: {name}.jsonl       # relative to this file
template: |-               # Jinja2 over the row's fields; the answer follows it
  Word: {{{{ text }}}}
  Is it alive?
labels: ["yes", "no"]      # the row's `label` values (or indices into this list); quote yes/no/on/off
target_field: label
metric: accuracy
description: Say whether a word names a living thing.
""",
    "multiple_choice": """\
# A multiple-choice task: each row lists its own options and the index of the correct one.
name: {name}
type: multiple_choice
source:
  kind: jsonl
  path: {name}.jsonl
template: |-
  Which word is spelled backwards as "{{{{ reversed }}}}"?
options_field: choices     # a list per row
target_field: answer       # the index of the correct option
metric: accuracy
description: Find the word behind its reversed spelling.
""",
    "generation": """\
# A generation task: the model writes the answer, scored by exact match and token F1.
name: {name}
type: generation
source:
  kind: jsonl
  path: {name}.jsonl
template: |-
  Spell backwards: {{{{ text }}}}
  Reversed:
target_field: target       # a string, or a list of acceptable answers
metric: exact_match
description: Spell a word backwards.
""",
}


def _rows(kind: str) -> list[dict[str, object]]:
    if kind == "classification":
        return [{"text": w, "label": "yes" if w in ("tiger", "garden", "apple", "violin") else "no"}
                for w in _WORDS]
    if kind == "multiple_choice":
        return [{"reversed": w[::-1], "choices": [w, _WORDS[(i + 1) % len(_WORDS)], _WORDS[(i + 2) % len(_WORDS)]],
                 "answer": 0} for i, w in enumerate(_WORDS)]
    return [{"text": w, "target": w[::-1]} for w in _WORDS]


def write_skeleton(name: str, kind: str, folder: Path) -> list[Path]:
    """Write ``NAME.yaml`` and ``NAME.jsonl`` into ``folder``; returns their paths.

    Raises:
        ConfigError: On a bad name or type, or if either file exists (nothing is overwritten).
    """
    if not name.replace("_", "").isalnum() or not name[:1].isalpha():
        raise ConfigError("name", f"{name!r}: use letters, digits and underscores, starting with a letter")
    if kind not in _YAML:
        raise ConfigError("--type", f"{kind!r} is not one of {', '.join(_YAML)}")
    files = [folder / f"{name}.yaml", folder / f"{name}.jsonl"]
    for path in files:
        if path.exists():
            raise ConfigError("name", f"{path} exists; choose another name or folder")
    folder.mkdir(parents=True, exist_ok=True)
    files[1].write_text("".join(json.dumps(r) + "\n" for r in _rows(kind)), encoding="utf-8")
    files[0].write_text(_YAML[kind].format(name=name), encoding="utf-8")
    return files
