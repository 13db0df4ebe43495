import pytest

from metalm.data import TaskRegistry
from metalm.models import train_tokenizer

from .fixtures import corpus, make_home, make_tasks_dir


@pytest.fixture
def home(tmp_path, monkeypatch):
    """METALM_HOME holding the fixture data."""
    path = make_home(tmp_path / "home")
    monkeypatch.setenv("METALM_HOME", str(path))
    return path


@pytest.fixture
def registry(home, tmp_path) -> TaskRegistry:
    return TaskRegistry.from_dirs(make_tasks_dir(tmp_path))


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(corpus(), vocab_size=400)
