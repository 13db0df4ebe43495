"""The task pool's data: public few-shot data sets, each file pinned by repository, commit and sha256.

``pool_manifest.json`` (beside this module) is the project's record of the sources: for each data
set (BLiMP, TweetEval, CLINC150, BANKING77, instruction induction, NLTK corpora) its GitHub
repository, the commit, the licence and every file's sha256 and size. The project holds this
manifest, never the data. :func:`install_pool` fetches every file from its pinned URL
(``https://raw.githubusercontent.com/OWNER/NAME/COMMIT/PATH``) or copies it from a mirror folder
laid out as ``SOURCE/PATH`` (the layout of ``../shared/pool`` on this project's machines), checks
each hash, and swaps the complete folder into the cache (``$METALM_HOME/data/pool``) at once: a
missing or corrupt file stops with one line naming it and its expected hash, and the cache stays as
it was.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path

from tqdm import tqdm

from ..errors import MetalmError
from ..runtime.files import disk_full, sha256_file
from .download import data_dir

MANIFEST = Path(__file__).with_name("pool_manifest.json")
RAW = "https://raw.githubusercontent.com"
#: Environment variable naming another base URL laid out as RAW is (``BASE/OWNER/NAME/COMMIT/PATH``):
#: a mirror of GitHub's raw files, or a test's server on loopback.
BASE_URL_ENV = "METALM_POOL_URL"


@cache
def pool_manifest() -> dict[str, dict]:
    """``{source: {"repository", "commit", "licence", "files": {path: {"sha256", "bytes"}}}}``."""
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def file_url(source: str, path: str, base: str | None = None) -> str:
    """The pinned URL of one file of the manifest (``base`` replaces ``https://raw.githubusercontent.com``)."""
    entry = pool_manifest()[source]
    owner_name = entry["repository"].removeprefix("https://github.com/").strip("/")
    return f"{(base or os.environ.get(BASE_URL_ENV) or RAW).rstrip('/')}/{owner_name}/{entry['commit']}/{path}"


def pool_file(source: str, path: str) -> Path:
    """A file of the installed pool; raises :class:`~metalm.errors.DataNotFoundError` naming the command."""
    from .download import require

    return require("pool") / source / path


def _fetch(url: str, dest: Path, retries: int) -> None:
    """``url`` into ``dest``, retried with back-off on network faults (an HTTP 404 is final)."""
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as fh:
                shutil.copyfileobj(response, fh)
            return
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == retries:
                raise MetalmError(f"pool: {url}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            if attempt == retries:
                reason = getattr(err, "reason", err)
                raise MetalmError(f"pool: cannot reach {url} ({reason}); without network, install from a copy: "
                                  "`metalm download pool --from DIR` (a folder laid out SOURCE/PATH)") from None
        time.sleep(min(2**attempt, 10))


def install_pool(source: str | Path | None = None, *, base_url: str | None = None, retries: int = 3,
                 progress: bool = True) -> Path:
    """Install every file of the manifest into the cache and return its folder.

    Args:
        source: A mirror folder laid out ``SOURCE/PATH`` (e.g. ``../shared/pool``) to copy from;
            ``None`` downloads each file from its pinned URL.
        base_url: Instead of ``https://raw.githubusercontent.com`` (or ``$METALM_POOL_URL``).
        retries: Network retries per file.

    Raises:
        MetalmError: One line naming the missing or corrupt file and its expected sha256, or the URL
            that failed; the cache is left as it was (nothing partial is kept).
    """
    local = Path(source).expanduser() if source is not None else None
    if local is not None and not local.is_dir():
        raise MetalmError(f"--from {local}: not a folder (a copy of the pool laid out SOURCE/PATH, as "
                          "../shared/pool is)")
    manifest = pool_manifest()
    final = data_dir("pool")
    final.parent.mkdir(parents=True, exist_ok=True)
    todo = [(src, path, meta) for src, entry in manifest.items() for path, meta in entry["files"].items()]
    with tempfile.TemporaryDirectory(prefix=".pool-", dir=final.parent) as tmp:
        data = Path(tmp) / "data"
        bar = tqdm(total=sum(m["bytes"] for _, _, m in todo), unit="B", unit_scale=True, desc="pool",
                   disable=not progress, file=sys.stderr, mininterval=1.0)
        with bar:
            for src, path, meta in todo:
                dest = data / src / path
                dest.parent.mkdir(parents=True, exist_ok=True)
                _install_file(local, src, path, dest, retries, base_url)
                digest = sha256_file(dest)
                if digest != meta["sha256"]:
                    where = local / src / path if local is not None else file_url(src, path, base_url)
                    raise MetalmError(f"pool: {where} is corrupt: sha256 {digest}, expected {meta['sha256']} "
                                      f"({meta['bytes']} bytes, {manifest[src]['repository']} at "
                                      f"{manifest[src]['commit'][:12]})")
                bar.update(meta["bytes"])
        record = {"name": "pool", "from": str(local.resolve()) if local is not None else
                  (base_url or os.environ.get(BASE_URL_ENV) or RAW), "sources": manifest}
        (data / "manifest.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        retired = Path(tmp) / "retired"  # the old cache stays complete until the new one is in place
        if final.exists():
            os.replace(final, retired)
        os.replace(data, final)
    return final


def _install_file(local: Path | None, src: str, path: str, dest: Path, retries: int, base_url: str | None) -> None:
    """One file of the manifest into ``dest``: copied from the mirror ``local``, else fetched."""
    try:
        if local is None:
            _fetch(file_url(src, path, base_url), dest, retries)
        elif (local / src / path).is_file():
            shutil.copyfile(local / src / path, dest)
        else:
            sha = pool_manifest()[src]["files"][path]["sha256"]
            raise MetalmError(f"pool: {local / src / path} is missing from the copy (expected sha256 {sha})")
    except OSError as err:
        if disk_full(err):
            raise MetalmError(f"pool: the disk is full writing {dest} ({err.strerror}); nothing was "
                              "installed") from None
        raise
