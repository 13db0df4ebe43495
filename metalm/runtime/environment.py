"""The software a result was measured with: the versions of the packages that decide its numbers.

``make install`` and CI install exactly the versions of ``requirements/lock.txt`` (``make lock``
regenerates it); every results JSON records :func:`versions` so a figure names what produced it.
"""

from __future__ import annotations

import platform
from importlib import metadata

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


def describe(recorded: dict[str, str] | None) -> str:
    """One line naming the versions of a results JSON (``"not recorded"`` for an older file)."""
    if not recorded:
        return "not recorded"
    return ", ".join(f"{k} {v}" for k, v in recorded.items())
