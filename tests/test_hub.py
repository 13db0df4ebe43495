"""The embedded SmolLM2 model: cache resolution, and the converted weights (when downloaded)."""

import pytest
import torch

import metalm
from metalm.errors import DataNotFoundError, MetalmError
from metalm.hub import download_model, model_dir, resolve_model

CACHED = (model_dir("smollm2-135m") / "manifest.json").is_file()


def test_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("METALM_HOME", str(tmp_path))
    assert resolve_model("/some/folder") == "/some/folder"
    with pytest.raises(DataNotFoundError, match="run `metalm download smollm2-135m`"):
        resolve_model("smollm2-135m")
    with pytest.raises(MetalmError, match="unknown model"):
        download_model("gpt-5")


@pytest.mark.realmodel
@pytest.mark.skipif(not CACHED, reason="run `metalm download smollm2-135m` first")
def test_converted_smollm2_is_a_working_pretrained_lm():
    from transformers import AutoTokenizer

    path = resolve_model("smollm2-135m")
    model = metalm.load_model(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    natural = "Paris is the capital of France, and Berlin is the capital of Germany."
    shuffled = "capital Germany. Paris and of the is capital Berlin France, of is the"
    ppl = []
    for text in (natural, shuffled):
        ids = tok(text, return_tensors="pt")
        with torch.no_grad():
            ppl.append(model(**ids, labels=ids["input_ids"]).loss.exp().item())
    assert ppl[0] < 10 < 50 < ppl[1]  # measured: 6.1 and several hundred
