"""Files: checksums, atomic rewrites, and the JSON-lines logs of a run folder (read tolerantly)."""

from __future__ import annotations

import hashlib
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


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
