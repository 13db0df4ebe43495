"""Files: checksums, atomic rewrites, and the JSON-lines logs of a run folder (read tolerantly)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: The errno of a write refused for lack of room: no space, a quota, a file-size limit. Every writer
#: (checkpoints, logs, journals, downloads) reports these in one line (:func:`disk_full`).
FULL_DISK = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})

_UMASK = os.umask(0)
os.umask(_UMASK)


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a write refused for lack of room (:data:`FULL_DISK`)."""
    return isinstance(err, OSError) and err.errno in FULL_DISK


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
    """Write ``text`` to ``path`` through a temporary file, fsync and a rename: the old file stays whole
    until the new one is complete on disk (a kill or a full disk leaves one or the other, never half).
    The temporary file's name is unique, so two processes rewriting the same file never share one (the last
    rename wins; a read-modify-write that must not lose an update takes a lock, :func:`locked`)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with open(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)  # as open() would create it (mkstemp's are private)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``fcntl.flock`` on the folder itself: no lock file to leave
    behind or to commit), waiting for another process that holds it. For a read-modify-write of a file in
    it shared by processes running side by side (two lanes updating one manifest). Where ``fcntl`` does
    not exist (Windows), nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
