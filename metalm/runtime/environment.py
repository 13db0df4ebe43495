"""The software a result was measured with: the versions of the packages that decide its numbers.

``make install`` and CI install exactly the versions of ``requirements/lock.txt`` (``make lock``
regenerates it); every results JSON records :func:`versions` so a figure names what produced it.
"""

from __future__ import annotations

import platform
import warnings
from importlib import metadata
from pathlib import Path

#: The distributions whose versions a result records (the numerics stack and the data readers).
RECORDED = ("torch", "transformers", "peft", "accelerate", "datasets", "numpy", "safetensors", "tokenizers",
            "torchjd", "scipy")


def versions() -> dict[str, str]:
    """``{package: version}`` of :data:`RECORDED` (``"absent"`` when not installed), plus ``python``
    and ``metalm``."""
    from .. import __version__

    out = {"python": platform.python_version(), "metalm": __version__}
    for name in RECORDED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU multiplies bfloat16 matrices natively (the ``avx512_bf16`` or ``amx_bf16`` flag of
    ``/proc/cpuinfo``); ``None`` where that file does not say (another OS). Without them PyTorch emulates
    bf16 products: on a Xeon without them a SmolLM2 training step under bf16 autocast took 3.7-4.6x the
    seconds of float32 (``benchmarks/results/claim_pool_cost.json``); on one with AVX512-BF16, 0.43x."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags = [line for line in text.splitlines() if line.startswith("flags")]
    if not flags:
        return None
    return any(f in flags[0].split() for f in ("avx512_bf16", "amx_bf16"))


def warn_if_emulated_bf16(device_type: str, what: str) -> None:
    """Warn when bf16 autocast is asked of a CPU that emulates it (:func:`cpu_has_bf16` is ``False``):
    ``what`` (training, evaluation) then takes several times float32's seconds."""
    if device_type == "cpu" and cpu_has_bf16() is False:
        warnings.warn(f"autocast: bf16 {what} on a CPU without AVX512-BF16 or AMX, where bf16 products are "
                      "emulated: several times float32's seconds (3.7-4.6x measured for a SmolLM2 training "
                      "step); float32 is faster here (autocast: auto trains in bf16 on a GPU only)", stacklevel=3)


def describe(recorded: dict[str, str] | None) -> str:
    """One line naming the versions of a results JSON (``"not recorded"`` for an older file)."""
    if not recorded:
        return "not recorded"
    return ", ".join(f"{k} {v}" for k, v in recorded.items())
