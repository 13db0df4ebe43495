"""JSON-lines files of a run folder (``log.jsonl``, ``conflict.jsonl``): read tolerantly, rewritten atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a line that is not one (cut short by a kill, damaged,
    not UTF-8) is skipped."""
    out = []
    for raw in Path(path).read_bytes().splitlines():
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def trim_to_step(path: Path, step: int) -> None:
    """Rewrite ``path`` (atomically) keeping the rows logged at or before ``step``, damaged lines dropped."""
    rows = [r for r in json_lines(path) if isinstance(r.get("step", 0), int) and r.get("step", 0) <= step]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
