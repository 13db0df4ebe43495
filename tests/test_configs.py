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


# What make main may change in the candidate it runs: the schedule's length and what it writes on the way
BUDGET = {"max_steps", "val_every", "val_episodes", "checkpoint_every", "keep_checkpoints", "outer.warmup_steps"}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_main_runs_the_candidate_designated_at_16_shots():
    """make main's recipe is the claim study's designated candidate (PLAN.md, 2026-12-07, session 32): its
    config with only the budget cut, so the main job cannot drift from the recipe the study chose."""
    import dataclasses
    import json

    selection = json.loads((FEWSHOT.parents[0] / "results" / "claim_selection.json").read_text(encoding="utf-8"))
    name = Path(selection["designated"]["16"]["candidate"]).name.removeprefix("long-")
    main = _flat(dataclasses.asdict(load_train_config(FEWSHOT / "main.yaml")))
    candidate = _flat(dataclasses.asdict(load_train_config(FEWSHOT / "claim" / f"{name}.yaml")))
    differ = {k for k in main.keys() | candidate.keys() if main.get(k) != candidate.get(k)}
    assert differ <= BUDGET, f"main.yaml differs from claim/{name}.yaml beyond the budget: {sorted(differ - BUDGET)}"
    assert main["max_steps"] < candidate["max_steps"]
