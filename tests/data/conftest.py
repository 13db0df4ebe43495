import pytest

from metalm.models import train_tokenizer

from .fixtures import corpus


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(corpus(), vocab_size=400)
