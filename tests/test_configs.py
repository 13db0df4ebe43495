"""Every shipped run config validates, and names only tasks that exist."""

from pathlib import Path

import pytest

from metalm.train import build_registry, load_train_config, task_lists

FEWSHOT = Path(__file__).resolve().parents[1] / "benchmarks" / "fewshot"
CONFIGS = sorted(FEWSHOT.rglob("*.yaml"))  # sub-folders too (the study's candidates)


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(FEWSHOT).with_suffix("")) for p in CONFIGS])
def test_shipped_config_validates(path):
    config = load_train_config(path)
    train, val, heldout = task_lists(config, build_registry(config))
    assert train and val and heldout and not set(train) & set(heldout)
