"""Resident memory over a long ``metalm`` command: is it flat after warm-up?

Runs ``python -m metalm.cli ARGS`` (one thread, niced) and samples the process's resident set
(``VmRSS`` in ``/proc/PID/status``) every ``--every`` seconds. For ``train`` each sample is tagged
with the steps logged so far (``log.jsonl`` of ``--run-dir``), and growth compares the mean resident
set over steps [S/6, S/3] with the last sixth [5S/6, S]; for any other command (``eval``) the same
windows are fractions of the wall time. Growth = last window / warm window - 1. Writes the samples
and the figure as JSON.

    python benchmarks/speed/resident.py --json benchmarks/results/resident_train.json -- \\
        train benchmarks/fewshot/fomaml.yaml --run-dir runs/resident --max-steps 300 val_every=0
    python benchmarks/speed/resident.py --json benchmarks/results/resident_eval.json -- \\
        eval --run-dir runs/resident --shots 4 --episodes 20 --methods zeroshot,finetune,meta --quiet
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def logged_steps(run_dir: Path | None) -> int:
    log = run_dir / "log.jsonl" if run_dir else None
    if log is None or not log.is_file():
        return 0
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    try:
        return int(json.loads(lines[-1]).get("step", len(lines))) if lines else 0
    except json.JSONDecodeError:  # a line being written
        return len(lines) - 1


def window_mean(samples: list[dict], key: str, low: float, high: float) -> tuple[float, int]:
    chosen = [s["rss_mib"] for s in samples if low <= s[key] <= high]
    return (statistics.fmean(chosen) if chosen else float("nan")), len(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then the metalm command and its arguments")
    args = parser.parse_args()
    cli = [a for a in args.args if a != "--"] if args.args[:1] == ["--"] else args.args
    run_dir = Path(cli[cli.index("--run-dir") + 1]) if "--run-dir" in cli else None
    training = cli[0] == "train"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(["nice", "-n", "5", sys.executable, "-m", "metalm.cli", *cli], env=env)
    samples: list[dict] = []
    while proc.poll() is None:
        rss = rss_mib(proc.pid)
        if rss is not None:
            samples.append({"t": round(time.monotonic() - start, 2), "rss_mib": round(rss, 2),
                            **({"step": logged_steps(run_dir)} if training else {})})
        time.sleep(args.every)
    if proc.returncode:
        sys.exit(f"the command exited {proc.returncode}")
    if training:
        total, key = max(s["step"] for s in samples), "step"
    else:
        total, key = samples[-1]["t"], "t"
    warm, n_warm = window_mean(samples, key, total / 6, total / 3)
    last, n_last = window_mean(samples, key, 5 * total / 6, total)
    result = {"command": "metalm " + " ".join(cli), "window_key": key, "total": total,
              "warm_window": [total / 6, total / 3], "last_window": [5 * total / 6, total],
              "warm_mib": round(warm, 1), "last_mib": round(last, 1), "samples_in_windows": [n_warm, n_last],
              "growth": round(last / warm - 1, 5), "peak_mib": max(s["rss_mib"] for s in samples),
              "seconds": round(time.monotonic() - start, 1), "samples": samples}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result) + "\n", encoding="utf-8")
    print(f"{result['command']}: resident {warm:.1f} MiB ({key} {total / 6:g}-{total / 3:g}) -> {last:.1f} MiB "
          f"({key} {5 * total / 6:g}-{total:g}): growth {100 * result['growth']:+.2f}%, "
          f"peak {result['peak_mib']:.0f} MiB, {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
