"""A long run's resumable state kept in the repository, so it survives the machine it ran on.

A run folder (``runs/NAME``) is local: a replaced machine loses it. :func:`commit_state` copies the
run's newest intact checkpoint (the trained tensors: adapter / hypernetwork / library weights,
optimizer, scheduler, sampler and RNG state, the step; never the base model, which is not in a
checkpoint) with its ``config.yaml`` and ``log.jsonl`` into a tracked folder such as
``benchmarks/runs/NAME``, refusing more than ``max_bytes``. :func:`restore_state` lays that state
into an empty run folder on a fresh clone; ``metalm train --resume`` then continues bit-identically
to a run that was never interrupted. Commit it once each time a run stops (a stage's end, SIGTERM),
not at every checkpoint: every commit stays in the history. A study that evaluates an older checkpoint
(a learning curve's chosen step) keeps it too (:func:`keep_checkpoint`): kept checkpoints stay in the
committed folder through later commits and are laid in beside the newest. Checkpoints that are only
scored (kept ones, and a finished run's) are committed without the optimizer's state. A committed
tensor file over :data:`PART_BYTES` is stored in parts (``tensors.safetensors.part-000``, ...; no file
of the repository over a few MB), joined back byte for byte when the state is laid in.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import MetalmError
from .checkpoint import PREFIX, drop_optimizer_state, latest_checkpoint, list_checkpoints, read_checkpoint, read_step
from .files import write_atomic

#: The most a committed state may weigh: a LoRA run's is a few MB; a run that meta-learns the whole
#: model (``meta.shared``) does not belong in the repository.
MAX_BYTES = 32 * 2**20
#: The largest file a committed state holds: a bigger tensor file (a library of many adapters) is split
#: into parts of this size, joined back when laid in (its checksum then verifies the whole).
PART_BYTES = 4 * 2**20
_FILES = ("config.yaml", "log.jsonl")
_TENSORS = "tensors.safetensors"
KEPT = "kept.txt"  # the steps kept besides the newest, one a line


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _over(folder: Path) -> str:
    """What a too-large state is made of (the optimizer's share), and what to do, for the error."""
    from safetensors.torch import load_file

    sizes = [(key.startswith("opt/"), t.nbytes) for path in folder.rglob("tensors.safetensors")
             for key, t in load_file(str(path)).items()]
    opt, total = sum(n for is_opt, n in sizes if is_opt), sum(n for _, n in sizes)
    return (f"{opt / max(total, 1):.0%} of its tensors the optimizer's state: a run that meta-learns the whole "
            "model (meta.shared) does not belong in the repository; a finished run is committed weights only")


def _pack(checkpoint: Path, part_bytes: int) -> None:
    """Split a checkpoint folder's tensor file into parts of at most ``part_bytes`` (a file no bigger stays)."""
    if part_bytes < 1:
        raise MetalmError(f"part_bytes must be a positive number of bytes, not {part_bytes}")
    whole = checkpoint / _TENSORS
    if whole.stat().st_size <= part_bytes:
        return
    with whole.open("rb") as f:
        for i, chunk in enumerate(iter(lambda: f.read(part_bytes), b"")):
            (checkpoint / f"{_TENSORS}.part-{i:03d}").write_bytes(chunk)
    whole.unlink()


def _parts(checkpoint: Path) -> list[Path]:
    return sorted(checkpoint.glob(f"{_TENSORS}.part-*"))


def _unpack(checkpoint: Path) -> None:
    """Join a packed tensor file back (:func:`_pack`); read_checkpoint's checksum then verifies it."""
    parts = _parts(checkpoint)
    if not parts:
        return
    with (checkpoint / _TENSORS).open("wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    for part in parts:
        part.unlink()


def _committed(state_dir: Path) -> list[Path]:
    """A committed state's checkpoints, oldest first, whole or packed (:func:`_pack`)."""
    return list_checkpoints(state_dir, has_tensors=lambda p: (p / _TENSORS).is_file() or bool(_parts(p)))


def committed_step(state_dir: str | Path) -> int | None:
    """The step of the checkpoint a committed state holds (``None`` without one)."""
    found = _committed(Path(state_dir))
    return read_step(found[-1]) if found else None


def commit_state(run_dir: str | Path, state_dir: str | Path, *, max_bytes: int = MAX_BYTES,
                 weights_only: bool = False, part_bytes: int = PART_BYTES) -> int:
    """Replace ``state_dir`` by the run's newest intact checkpoint, ``config.yaml`` and ``log.jsonl``, with
    the checkpoints it kept before (:func:`keep_checkpoint`, weights only). ``weights_only`` (a finished
    run, which is scored and never resumed): the newest too without its optimizer's state
    (:func:`~metalm.runtime.checkpoint.drop_optimizer_state`), a third of an Adam-trained state's size.
    Tensor files over ``part_bytes`` are committed in parts.

    Returns:
        The step committed.

    Raises:
        MetalmError: Without an intact checkpoint, or when the state exceeds ``max_bytes`` (naming both
            sizes); ``state_dir`` is left as it was.
    """
    run_dir, state_dir = Path(run_dir), Path(state_dir)
    checkpoint = latest_checkpoint(run_dir)  # verified against its checksums
    if checkpoint is None:
        raise MetalmError(f"{run_dir} has no checkpoint to commit")
    kept = [p for p in kept_checkpoints(state_dir) if p.name != checkpoint.path.name]
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{state_dir.name}-", dir=state_dir.parent))
    try:
        shutil.copytree(checkpoint.path, tmp / "checkpoints" / checkpoint.path.name)
        if weights_only:
            drop_optimizer_state(tmp / "checkpoints" / checkpoint.path.name)
        for path in kept:  # scored, never resumed: weights only (a kept step that was the newest was not)
            shutil.copytree(path, tmp / "checkpoints" / path.name)
            _unpack(tmp / "checkpoints" / path.name)
            drop_optimizer_state(tmp / "checkpoints" / path.name)  # verifies it too
        if (state_dir / KEPT).is_file():
            shutil.copy2(state_dir / KEPT, tmp / KEPT)
        for name in _FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, tmp / name)
        size = _size(tmp)  # what would be committed (a finished run's and kept copies without the optimizer)
        if size > max_bytes:
            raise MetalmError(f"{checkpoint.path}: {size / 2**20:.1f} MiB of state is over the "
                              f"{max_bytes / 2**20:.0f} MiB a committed run may hold ({_over(tmp)})")
        for path in list_checkpoints(tmp):  # the same bytes, in files of at most part_bytes
            _pack(path, part_bytes)
        retired = tmp.with_name(tmp.name + "-old")
        if state_dir.exists():
            os.replace(state_dir, retired)
        os.replace(tmp, state_dir)
        shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return int(checkpoint.state["step"])


def restore_state(state_dir: str | Path, run_dir: str | Path) -> int | None:
    """Lay a committed state into ``run_dir`` unless the folder already holds a checkpoint as new.

    Returns:
        The step ``metalm train --resume`` will continue from (the local one where it is newer), or
        ``None`` when neither has a checkpoint.
    """
    state_dir, run_dir = Path(state_dir), Path(run_dir)
    local = list_checkpoints(run_dir)
    local_step = read_step(local[-1]) if local else None
    step = committed_step(state_dir)
    newest = _committed(state_dir)[-1] if step is not None else None
    # Kept ones the folder lacks. The newest is laid in below with the run's files, also when it is kept
    # (a finished run whose learning curve chose its last step).
    for path in kept_checkpoints(state_dir):
        if path != newest and not (run_dir / "checkpoints" / path.name).exists():
            _copy_in(path, run_dir)
    if step is None or (local_step is not None and local_step >= step):
        return local_step
    _copy_in(newest, run_dir)
    for name in _FILES:  # the committed run's files, with its newer step
        if (state_dir / name).is_file():
            shutil.copy2(state_dir / name, run_dir / name)
    return step


def _copy_in(checkpoint: Path, run_dir: Path) -> None:
    """Copy a committed checkpoint folder into ``run_dir/checkpoints`` under its name, whole, atomically."""
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{checkpoint.name}-", dir=run_dir / "checkpoints"))
    shutil.rmtree(tmp)
    try:
        shutil.copytree(checkpoint, tmp)
        _unpack(tmp)
        os.replace(tmp, run_dir / "checkpoints" / checkpoint.name)
    except BaseException:  # no half-copied folder is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def kept_checkpoints(state_dir: str | Path) -> list[Path]:
    """The checkpoints a committed state keeps besides its newest (:func:`keep_checkpoint`), oldest first."""
    state_dir = Path(state_dir)
    steps = set((state_dir / KEPT).read_text(encoding="utf-8").split()) if (state_dir / KEPT).is_file() else set()
    return [p for p in _committed(state_dir) if str(read_step(p)) in steps]


def keep_checkpoint(run_dir: str | Path, state_dir: str | Path, step: int, *, max_bytes: int = MAX_BYTES,
                    part_bytes: int = PART_BYTES) -> None:
    """Add ``run_dir``'s checkpoint of ``step`` to the committed state ``state_dir`` (made by
    :func:`commit_state`), to stay there through later commits: e.g. the step a learning curve chose,
    which a study evaluates after the run has trained on. The copy is weights only (it is scored, never
    resumed); the newest, when it is the step kept, stays as it is.

    Raises:
        MetalmError: Without a committed state, when the run has no intact checkpoint of ``step``, or over
            ``max_bytes`` in all; ``state_dir`` is left as it was.
    """
    run_dir, state_dir = Path(run_dir), Path(state_dir)
    if committed_step(state_dir) is None:
        raise MetalmError(f"{state_dir} holds no committed state: commit the run first (commit_state)")
    name = f"{PREFIX}{step:07d}"
    target = state_dir / "checkpoints" / name
    source = run_dir / "checkpoints" / name
    if not target.is_dir():
        if not any(p.name == name for p in list_checkpoints(run_dir)):
            raise MetalmError(f"{source}: no such checkpoint to keep (this machine's run folder has "
                              f"{', '.join(p.name for p in list_checkpoints(run_dir)) or 'none'})")
        read_checkpoint(source)  # intact (checksums) before it is kept
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=state_dir / "checkpoints"))
        shutil.rmtree(tmp)
        try:
            shutil.copytree(source, tmp)
            drop_optimizer_state(tmp)  # scored, never resumed (resume reads the newest)
            _pack(tmp, part_bytes)
            size = _size(state_dir)  # the weights-only copy (under state_dir) counted with the rest
            if size > max_bytes:
                raise MetalmError(f"{source}: {size / 2**20:.1f} MiB of state with it is over the "
                                  f"{max_bytes / 2**20:.0f} MiB a committed run may hold")
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    steps = {str(read_step(p)) for p in kept_checkpoints(state_dir)} | {str(step)}
    write_atomic(state_dir / KEPT, "\n".join(sorted(steps, key=int)) + "\n")
