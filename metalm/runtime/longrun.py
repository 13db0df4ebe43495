"""What long runs on shared machines meet: a scheduler's signal, a second launch, a full disk.

* :class:`StopSignals`: SIGTERM and SIGINT ask a run to stop. ``metalm train`` finishes its outer
  step, checkpoints it and exits with ``128 + signal`` (143, 130), so no logged step is lost; a
  second signal stops at once (the last checkpoint stays intact: checkpoints are written atomically).
* :class:`RunLock`: one writer per run folder. ``fcntl.flock`` on ``.lock`` in the folder; the kernel
  releases it when its holder dies, however it dies, so a stale lock never blocks.
* :func:`disk_full`: whether an ``OSError`` is a full disk, a quota or a file-size limit (ENOSPC,
  EDQUOT, EFBIG): the command line reports it in one line and exits 2.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from ..errors import MetalmError
from .files import disk_full  # noqa: F401 - re-exported: the CLI and the trainer ask here

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(MetalmError):
    """A run stopped on a signal; ``status`` is the conventional exit status (128 + signal number)."""

    def __init__(self, signum: int, message: str) -> None:
        self.signum, self.status = signum, 128 + signum
        super().__init__(message)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """Record SIGTERM / SIGINT while the block runs (handlers restored after it).

    Args:
        immediate: Raise :class:`Interrupted` from the first signal (for work whose progress is already
            saved as it goes, e.g. an evaluation's journal); else the first signal is only recorded
            (:attr:`requested`) and a second one raises.
        what, note: The message: ``{what} stopped by SIGTERM{note}``.

    Outside the main thread (where Python cannot install handlers) nothing is installed.
    """

    def __init__(self, immediate: bool = False, what: str = "the run", note: str = "") -> None:
        self.immediate, self.what, self.note = immediate, what, note
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.immediate or self.requested is not None:
            raise Interrupted(signum, f"{self.what} stopped by {signal_name(signum)}{self.note}")
        self.requested = signum
        print(f"metalm: {signal_name(signum)}: {self.what} stops after this step, with a checkpoint (a second "
              "signal stops it at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


_HELD: dict[Path, int] = {}  # locks this process holds: taking one again only counts (flock would refuse it)


class RunLock:
    """An exclusive, non-blocking lock on ``folder/name`` (created), holding this process's pid;
    re-entrant within a process (the command line takes it before loading a model, the trainer again).

    Raises:
        MetalmError: On entry, if another process holds it (naming that process's pid).
    """

    def __init__(self, folder: str | Path, name: str = ".lock", what: str = "run folder") -> None:
        self.path = Path(folder) / name
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        key = self.path.resolve()
        if key in _HELD:
            _HELD[key] += 1
            return self
        try:
            import fcntl
        except ImportError:  # no flock on this platform: one writer is the user's to ensure
            return self
        folder = self.path.parent
        if folder.exists() and not folder.is_dir():
            raise MetalmError(f"{folder} is a file, not a folder: give a new or existing folder as the {self.what}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            if disk_full(err):
                raise
            raise MetalmError(f"cannot use {folder} as the {self.what}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise MetalmError(f"{self.path.parent} is in use by process {holder} (it holds {self.path}); "
                              f"wait for it to end or stop it, or use another {self.what}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _HELD[key] = 1
        return self

    def __exit__(self, *exc: object) -> None:
        key = self.path.resolve()
        if _HELD.get(key, 0) > 1:
            _HELD[key] -= 1
            return
        _HELD.pop(key, None)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the lock
            self._fd = None
