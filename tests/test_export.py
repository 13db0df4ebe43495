"""metalm export loads anywhere with transformers + peft alone, for every kind of shared weights."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from metalm.cli import main
from metalm.data import CollateConfig, EpisodeSampler, SamplerConfig
from metalm.eval import option_scores
from metalm.run import build_registry, load_run

from .data.fixtures import make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("export"), outer={"lr": 0.05, "meta_batch": 2}, max_steps=2,
                      val_every=0, algorithm={"name": "fomaml", "inner": {"steps": 1, "lr": 0.3}})


@pytest.mark.parametrize("shared", ["none", "norms", "top:1", "all"])
def test_export_round_trip_with_transformers_and_peft_only(world, tmp_path, monkeypatch, shared):
    monkeypatch.setenv("METALM_HOME", world["env"]["METALM_HOME"])
    run, export = tmp_path / "run", tmp_path / "export"
    assert main(["train", str(world["config"]), "--run-dir", str(run), "--quiet", f"meta.shared={shared}"]) == 0
    assert main(["export", str(run), str(export)]) == 0
    adapter_config = json.loads((export / "adapter_config.json").read_text())
    base_ref = adapter_config["base_model_name_or_path"]
    assert not Path(base_ref).is_absolute()  # portable: relative to the export for a local folder
    # What a user elsewhere does, with transformers and peft only:
    base = AutoModelForCausalLM.from_pretrained(str((export / base_ref).resolve()))
    shared_file = export / "shared_weights.safetensors"
    assert shared_file.is_file() == (shared != "none")
    if shared_file.is_file():
        weights = load_file(str(shared_file))
        own = base.state_dict()
        assert set(weights) <= set(own), sorted(set(weights) - set(own))  # the base model's own names
        own.update(weights)
        base.load_state_dict(own, strict=True)
    peft = PeftModel.from_pretrained(base, str(export)).eval()
    tok = AutoTokenizer.from_pretrained(str(export))
    loaded = load_run(run, torch.device("cpu"))
    episode = EpisodeSampler([build_registry(loaded.config)["toy_cls"]], SamplerConfig(ways=2, shots=1, queries=2),
                             seed=0).sample()
    ours = option_scores(loaded.load_into_model().model, {}, episode.query, tok, CollateConfig(max_length=64))
    theirs = option_scores(peft, {}, episode.query, tok, CollateConfig(max_length=64))
    assert torch.allclose(torch.tensor(ours), torch.tensor(theirs), atol=1e-5)
    meta = json.loads((export / "metalm.json").read_text())
    assert Path(meta["base_model_path"]).is_absolute() and meta["base_model_name_or_path"] == base_ref
