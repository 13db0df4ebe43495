"""Resident memory over a long ``metalm`` command: is it flat after warm-up?

Runs ``python -m metalm.cli ARGS`` (one thread, niced) and samples the process's resident set
(``VmRSS`` in ``/proc/PID/status``) every ``--every`` seconds. For ``train`` each sample is tagged
with the steps logged so far (``log.jsonl`` of ``--run-dir``), and growth compares the mean resident
set over steps [S/6, S/3] with the last sixth [5S/6, S]; for any other command (``eval``) the same
windows are fractions of the wall time. Growth = last window / warm window - 1. Writes the samples
and the figure as JSON, rewritten (atomically) every ``--write-every`` seconds while the command runs
(``"complete": false``, figures over the samples so far), so a measurement stopped half way (a
session's end, a kill of this script: the command is then stopped too) keeps what it sampled.

    python benchmarks/speed/resident.py --json benchmarks/results/resident_train.json -- \\
        train benchmarks/fewshot/fomaml.yaml --run-dir runs/resident --max-steps 300 val_every=0
    python benchmarks/speed/resident.py --json benchmarks/results/resident_eval.json -- \\
        eval --run-dir runs/resident --shots 4 --episodes 20 --methods zeroshot,finetune,meta --quiet
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from metalm.runtime.files import write_atomic  # noqa: E402


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


def summary(cli: list[str], samples: list[dict], training: bool, seconds: float, complete: bool) -> dict:
    """The growth figure over ``samples`` (those so far when ``complete`` is false)."""
    key = "step" if training else "t"
    total = max((s[key] for s in samples), default=0)
    warm, n_warm = window_mean(samples, key, total / 6, total / 3)
    last, n_last = window_mean(samples, key, 5 * total / 6, total)
    return {"command": "metalm " + " ".join(cli), "complete": complete, "window_key": key, "total": total,
            "warm_window": [total / 6, total / 3], "last_window": [5 * total / 6, total],
            "warm_mib": round(warm, 1), "last_mib": round(last, 1), "samples_in_windows": [n_warm, n_last],
            "growth": round(last / warm - 1, 5) if warm == warm and warm > 0 else None,
            "peak_mib": max((s["rss_mib"] for s in samples), default=None),
            "seconds": round(seconds, 1), "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--write-every", type=float, default=60.0, help="seconds between rewrites of --json")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then the metalm command and its arguments")
    args = parser.parse_args()
    cli = [a for a in args.args if a != "--"] if args.args[:1] == ["--"] else args.args
    if not cli:
        parser.error("no metalm command after --")
    run_dir = Path(cli[cli.index("--run-dir") + 1]) if "--run-dir" in cli else None
    training = cli[0] == "train"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    start = last_write = time.monotonic()
    proc = subprocess.Popen(["nice", "-n", "5", sys.executable, "-m", "metalm.cli", *cli], env=env)
    samples: list[dict] = []

    def write(complete: bool) -> dict:
        result = summary(cli, samples, training, time.monotonic() - start, complete)
        write_atomic(args.json, json.dumps(result) + "\n")
        return result

    def stop(signum: int, _frame: object) -> None:  # keep the samples, stop the command with us
        proc.terminate()
        write(False)
        sys.exit(f"stopped by signal {signum}: {len(samples)} samples kept in {args.json} (complete: false)")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while proc.poll() is None:
        rss = rss_mib(proc.pid)
        if rss is not None:
            samples.append({"t": round(time.monotonic() - start, 2), "rss_mib": round(rss, 2),
                            **({"step": logged_steps(run_dir)} if training else {})})
        if time.monotonic() - last_write >= args.write_every:
            write(False)
            last_write = time.monotonic()
        time.sleep(args.every)
    if proc.returncode:
        write(False)
        sys.exit(f"the command exited {proc.returncode} ({len(samples)} samples kept in {args.json})")
    result = write(True)
    total, key = result["total"], result["window_key"]
    print(f"{result['command']}: resident {result['warm_mib']:.1f} MiB ({key} {total / 6:g}-{total / 3:g}) -> "
          f"{result['last_mib']:.1f} MiB ({key} {5 * total / 6:g}-{total:g}): growth {100 * result['growth']:+.2f}%, "
          f"peak {result['peak_mib']:.0f} MiB, {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
