"""The pool's install: the pinned-URL path against a real HTTP server on loopback, the copy path, and
failures that leave the cache as it was; every generated task file of the real pool renders an episode.

The download tests use a small manifest of their own (three files of two sources) served by
``http.server`` on 127.0.0.1: the real client code (urllib, retries, hashes, the atomic swap) runs.
"""

import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from metalm.data import pool as pool_mod
from metalm.data.download import data_dir
from metalm.errors import MetalmError

FILES = {"alpha": {"data/a.jsonl": b'{"x": 1}\n', "LICENSE": b"CC BY 4.0\n"}, "beta": {"datasets/b/mapping.txt": b"0\tno\n"}}
COMMIT = {"alpha": "a" * 40, "beta": "b" * 40}


def small_manifest() -> dict:
    return {src: {"repository": f"https://github.com/owner/{src}", "commit": COMMIT[src], "licence": "test",
                  "files": {p: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for p, b in files.items()}}
            for src, files in FILES.items()}


@pytest.fixture
def manifest(monkeypatch, tmp_path):
    monkeypatch.setenv("METALM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(pool_mod, "pool_manifest", small_manifest)
    return small_manifest()


def mirror(root: Path) -> Path:
    """The copy's layout: SOURCE/PATH."""
    for src, files in FILES.items():
        for path, data in files.items():
            (root / src / path).parent.mkdir(parents=True, exist_ok=True)
            (root / src / path).write_bytes(data)
    return root


@pytest.fixture
def server(tmp_path):
    """GitHub's raw layout (OWNER/NAME/COMMIT/PATH) served on loopback; yields the base URL."""
    root = tmp_path / "www"
    for src, files in FILES.items():
        for path, data in files.items():
            dest = root / "owner" / src / COMMIT[src] / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != "manifest.json"}


def test_the_loopback_download_equals_the_copy_byte_for_byte(manifest, server, tmp_path):
    url, _ = server
    fetched = tree(pool_mod.install_pool(base_url=url, progress=False))
    record = json.loads((data_dir("pool") / "manifest.json").read_text())
    assert record["from"] == url and record["sources"] == manifest
    copied = tree(pool_mod.install_pool(mirror(tmp_path / "copy"), progress=False))
    assert fetched == copied == {f"{s}/{p}": b for s, files in FILES.items() for p, b in files.items()}
    assert pool_mod.file_url("alpha", "data/a.jsonl") == \
        f"https://raw.githubusercontent.com/owner/alpha/{'a' * 40}/data/a.jsonl"


def test_a_file_the_server_lacks_is_named_and_the_cache_is_kept(manifest, server, tmp_path):
    url, root = server
    pool_mod.install_pool(mirror(tmp_path / "copy"), progress=False)
    before = tree(data_dir("pool"))
    (root / "owner" / "beta" / COMMIT["beta"] / "datasets/b/mapping.txt").unlink()
    with pytest.raises(MetalmError, match=r"^pool: http://127\.0\.0\.1:\d+/owner/beta/b+/datasets/b/mapping\.txt: "
                                          r"HTTP 404"):
        pool_mod.install_pool(base_url=url, retries=0, progress=False)
    assert tree(data_dir("pool")) == before
    assert not [p for p in data_dir("pool").parent.iterdir() if p.name.startswith(".pool-")]  # no partial folder


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_missing_or_corrupt_file_in_a_copy_is_one_line_and_the_cache_is_kept(manifest, tmp_path, damage):
    copy = mirror(tmp_path / "copy")
    pool_mod.install_pool(copy, progress=False)
    before = tree(data_dir("pool"))
    target = copy / "alpha" / "data" / "a.jsonl"
    expected = manifest["alpha"]["files"]["data/a.jsonl"]["sha256"]
    if damage == "missing":
        target.unlink()
        pattern = rf"^pool: {target} is missing from the copy \(expected sha256 {expected}\)$"
    else:
        target.write_bytes(b'{"x": 2}\n')
        pattern = rf"^pool: {target} is corrupt: sha256 [0-9a-f]{{64}}, expected {expected} \(9 bytes, "
    with pytest.raises(MetalmError, match=pattern) as err:
        pool_mod.install_pool(copy, progress=False)
    assert "\n" not in str(err.value)
    assert tree(data_dir("pool")) == before
    assert not [p for p in data_dir("pool").parent.iterdir() if p.name.startswith(".pool-")]


def test_the_cli_says_one_line_for_a_bad_copy(tmp_path):
    """`metalm download pool --from DIR` with a folder that holds none of the files: exit 2, one line."""
    env = {"METALM_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "metalm.cli", "download", "pool", "--from", str(tmp_path / "empty")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("metalm: error: pool: ") and "is missing from the copy (expected sha256 " in line
    assert not (tmp_path / "home" / "data" / "pool").exists()


def test_the_project_manifest_pins_every_source_by_commit_and_hash():
    manifest = pool_mod.pool_manifest()
    assert set(manifest) == {"blimp", "tweeteval", "clinc150", "banking77", "instruction_induction", "nltk_corpora"}
    for entry in manifest.values():
        assert entry["repository"].startswith("https://github.com/") and len(entry["commit"]) == 40
        assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in entry["files"].values())
