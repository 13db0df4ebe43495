"""``--json``: the figures a speed script prints, also written as the JSON its RESULTS table is built from."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from metalm.runtime.environment import versions  # noqa: E402
from metalm.runtime.files import write_atomic  # noqa: E402


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, help="also write the figures here (JSON: command, machine, rows)")


def write_json(path: Path | None, rows: list[dict[str, Any]], **extra: Any) -> None:
    """Write ``{"command", "date", "machine", "torch", "versions", **extra, "rows"}`` to ``path`` (atomically); no-op
    without a path."""
    if path is None:
        return
    payload = {"command": "python " + " ".join(sys.argv), "date": datetime.date.today().isoformat(),
               "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                          f"{'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}",
               "torch": torch.__version__, "versions": versions(), **extra, "rows": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(payload, indent=1) + "\n")
