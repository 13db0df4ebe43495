"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint is a folder ``checkpoints/step-NNNNNNN/`` holding ``tensors.safetensors`` (the
meta-parameters, the optimizer's tensor state and the torch RNG state) and ``state.json``
(step, optimizer hyper-parameters, scheduler, sampler stream, algorithm counters, Python and
NumPy RNG states, the config). It is written into a temporary folder and renamed into place, so a
run killed at any moment leaves either the whole checkpoint or none; only the last ``keep`` are
kept. Loading never unpickles.

A checkpoint proves itself: ``checksums.json`` holds the SHA-256 of both files, verified on load,
and a checkpoint with a non-finite floating-point tensor is never written. :func:`read_checkpoint` is
the one reader: it opens each file once, hashes the bytes it loads and returns a :class:`Checkpoint`
value that train, eval, export and diagnose pass along (a command reads a checkpoint once).
:func:`latest_checkpoint` returns the newest checkpoint that reads and verifies, warning about each
newer one it passes over (a truncated file, a flipped bit), so ``--resume`` falls back to the previous
intact checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from ..errors import MetalmError, NonFiniteError
from ..sharding import full
from .files import sha256_file

PREFIX = "step-"
FILES = ("tensors.safetensors", "state.json")
REQUIRED = ("step", "optimizer", "scheduler", "sampler", "algorithm", "rng")
FORMAT = 2  # 2: with checksums.json (checkpoints of format 1 have none and are read unverified)


class CheckpointWarning(UserWarning):
    """A newer checkpoint was unreadable or corrupt and an older one is used instead."""


def _write_synced(path: Path, data: str | bytes) -> None:
    """Write and fsync; a full disk or a file-size limit raises ``OSError`` (ENOSPC, EDQUOT, EFBIG)."""
    try:
        with open(path, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        err.filename = err.filename or str(path)  # a refused write names no file of its own
        raise


def nonfinite(tensors: dict[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into tensors (``opt/{param}/{key}``) and JSON-able data."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, Tensor):  # a sharded state tensor whole (every process must call this)
                tensors[f"opt/{pid}/{key}"] = full(value).detach().cpu().contiguous()
            else:
                scalars[f"{pid}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], data: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_to_flat`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("opt/"):
            _, pid, key = name.split("/", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in data["scalars"].items():
        pid, key = name.split("/", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": data["param_groups"]})


def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The global RNG states: torch's as tensors, Python's and NumPy's as JSON."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    data = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, data


def set_rng_state(tensors: dict[str, Tensor], data: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = data["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = data["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, Tensor], state: dict[str, Any],
                    keep: int = 3) -> Path:
    """Write a checkpoint atomically and prune all but the newest ``keep``.

    Args:
        run_dir: The run folder; checkpoints go to ``run_dir/checkpoints``.
        step: The outer step the checkpoint is taken after.
        tensors: Named tensors (saved with safetensors; shared storage is copied).
        state: JSON-serializable state.
        keep: How many checkpoints to keep.

    Raises:
        NonFiniteError: If a floating-point tensor holds a NaN or an infinity (nothing is written).
    """
    bad = nonfinite(tensors)
    if bad:
        raise NonFiniteError(f"refusing to checkpoint step {step}: {len(bad)} tensor(s) hold NaN or inf, "
                             f"first {bad[0]!r}")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        # Serialized here and written by Python, so a full disk is an OSError naming the file (safetensors'
        # own writer reports it as a SafetensorError).
        _write_synced(tmp / "tensors.safetensors",
                      save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}))
        _write_synced(tmp / "state.json", json.dumps({"step": step, "format": FORMAT, **state}))
        _write_synced(tmp / "checksums.json", json.dumps({name: sha256_file(tmp / name) for name in FILES}))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        _remove(old)
    return final


def _remove(path: Path) -> None:
    """Delete a checkpoint folder: first renamed to a temporary name (atomic), so a kill during the
    deletion leaves a folder that :func:`clean_partial` removes, never a half-deleted checkpoint."""
    trash = path.with_name(f".trash-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def list_checkpoints(run_dir: Path, has_tensors: Callable[[Path], bool] | None = None) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of interrupted writes are ignored).
    ``has_tensors(folder)``: whether a folder holds its tensors (default: a ``tensors.safetensors`` file;
    a committed state's may be in parts, :mod:`metalm.runtime.runstate`)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    has_tensors = has_tensors or (lambda p: (p / "tensors.safetensors").is_file())
    return sorted(p for p in root.iterdir() if p.is_dir() and read_step(p) is not None
                  and (p / "state.json").is_file() and has_tensors(p))


def read_step(path: Path) -> int | None:
    """The step a checkpoint folder's name says (``step-0000500``: 500), or ``None`` for another name."""
    digits = path.name[len(PREFIX):]
    return int(digits) if path.name.startswith(PREFIX) and digits.isdigit() else None


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder, read once and verified (:func:`read_checkpoint`).

    Attributes:
        path: The folder (``checkpoints/step-NNNNNNN``).
        tensors: Its ``tensors.safetensors``: ``meta/<name>`` meta-parameters, optimizer state, RNG state.
        state: Its ``state.json``: step, optimizer, scheduler, sampler, algorithm counters, RNG states.
    """

    path: Path
    tensors: dict[str, Tensor]
    state: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def step(self) -> int:
        return int(self.state["step"])


def _read_verified(path: Path) -> tuple[dict[str, bytes], bool]:
    """Each checkpoint file's bytes, read once, checked against ``checksums.json`` when there is one
    (the flag: whether there was)."""
    raw = {name: (path / name).read_bytes() for name in FILES}
    sums = path / "checksums.json"
    if not sums.is_file():
        return raw, False
    recorded = json.loads(sums.read_bytes().decode("utf-8"))
    for name in FILES:
        if not isinstance(recorded, dict) or recorded.get(name) != hashlib.sha256(raw[name]).hexdigest():
            raise MetalmError(f"checkpoint {path} is corrupt: {name} does not match its recorded checksum")
    return raw, True


def _tensors_in_file_order(raw: bytes) -> dict[str, Tensor]:
    """The tensors of a safetensors file's bytes, in the file's order (``safetensors.torch.load`` returns
    them in a hash map's order, which differs between processes: under torchrun the ranks must walk
    a checkpoint's tensors in one order, or their collectives mismatch)."""
    loaded = load(raw)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size].decode("utf-8"))
    return {k: loaded[k] for k in sorted(loaded, key=lambda k: (header[k]["data_offsets"][0], k))}


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint folder (safetensors and JSON only; nothing is unpickled). Each file
    is opened once and the bytes hashed are the bytes loaded (transiently twice the tensors' size).

    Raises:
        MetalmError: Naming the folder, if a file is missing, unreadable, truncated or does not
            match its recorded checksum, or the state lacks a field. A checkpoint written before
            checksums existed (no ``checksums.json``, format 1) is read without that check.
    """
    path = Path(path)
    try:
        raw, summed = _read_verified(path)
        state = json.loads(raw["state.json"].decode("utf-8"))
        tensors = _tensors_in_file_order(raw.pop("tensors.safetensors"))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError, UnicodeDecodeError) as err:
        raise MetalmError(f"checkpoint {path} is unreadable: {err}") from err
    if isinstance(state, dict) and state.get("format", 1) != 1 and not summed:
        raise MetalmError(f"checkpoint {path} is corrupt: checksums.json is missing")
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED):
        missing = next(k for k in REQUIRED if not isinstance(state, dict) or k not in state)
        raise MetalmError(f"checkpoint {path} is corrupt: state.json has no {missing!r}")
    if not isinstance(state["step"], int) or isinstance(state["step"], bool) or state["step"] < 0:
        raise MetalmError(f"checkpoint {path} is corrupt: state.json step {state['step']!r} is not a step number")
    if path.name[len(PREFIX):].isdigit() and state["step"] != int(path.name[len(PREFIX):]):
        raise MetalmError(f"checkpoint {path} is corrupt: state.json says step {state['step']}")
    bad = nonfinite(tensors)
    if bad:
        raise MetalmError(f"checkpoint {path} is corrupt: {bad[0]!r} holds NaN or inf")
    return Checkpoint(path, tensors, state)


def drop_optimizer_state(path: str | Path) -> int:
    """Rewrite a checkpoint folder without its optimizer's tensors (``opt/*``, Adam's two moments: two
    thirds of an Adam-trained state): what scoring reads (the meta-parameters, the counters), not what
    resuming needs. ``state.json`` then says ``weights_only`` and :meth:`metalm.train.MetaTrainer.restore`
    refuses it. Rewrites in place: call it on a copy that is renamed into place afterwards.

    Returns:
        The bytes saved (0 for a checkpoint already weights only, left untouched).

    Raises:
        MetalmError: If the checkpoint is not intact (:func:`read_checkpoint`).
    """
    path = Path(path)
    checkpoint = read_checkpoint(path)
    if checkpoint.state.get("weights_only"):
        return 0
    before = (path / "tensors.safetensors").stat().st_size
    kept = {k: v.contiguous() for k, v in checkpoint.tensors.items() if not k.startswith("opt/")}
    _write_synced(path / "tensors.safetensors", save(kept))
    _write_synced(path / "state.json", json.dumps({**checkpoint.state, "weights_only": True}))
    _write_synced(path / "checksums.json", json.dumps({name: sha256_file(path / name) for name in FILES}))
    _fsync_dir(path)
    return before - (path / "tensors.safetensors").stat().st_size


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint of a run that reads and verifies (``None`` without any).

    Each newer checkpoint passed over is reported with a :class:`CheckpointWarning`.

    Raises:
        MetalmError: If there are checkpoints and none of them is intact.
    """
    found = list_checkpoints(run_dir)
    errors = []
    for path in reversed(found):
        try:
            checkpoint = read_checkpoint(path)
        except MetalmError as err:
            errors.append(str(err))
            continue
        for message in errors:
            warnings.warn(f"{message}; using {path.name}", CheckpointWarning, stacklevel=2)
        return checkpoint
    if errors:
        raise MetalmError(f"no intact checkpoint in {Path(run_dir) / 'checkpoints'}: " + "; ".join(errors))
    return None


def clean_partial(run_dir: Path) -> None:
    """Remove temporary folders left by writes and deletions that were killed, and checkpoint folders
    left incomplete by a deletion killed before this version renamed them first."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        complete = set(list_checkpoints(run_dir))
        for p in root.iterdir():
            if p.is_dir() and (p.name.startswith(".") or (p.name.startswith(PREFIX) and p not in complete)):
                shutil.rmtree(p, ignore_errors=True)
