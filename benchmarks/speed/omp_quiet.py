"""What ``OMP_WAIT_POLICY=PASSIVE`` costs on a quiet machine: a SmolLM2-135M forward pass (batch 16 x 200
tokens, no grad) with one OpenMP thread, two with torch's default (active) wait and two with passive wait,
each in its own process (the policy is read when OpenMP starts). Beside a busy core passive wait avoids a
15-fold slowdown (RESULTS, "Two threads beside a busy core"); this says what it costs when nothing else
runs. Run it on an idle machine (nothing else busy: the figures are meaningless otherwise).

    python benchmarks/speed/omp_quiet.py --json benchmarks/results/omp_quiet.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

PROBE = """
import time, torch
from transformers import AutoModelForCausalLM
from metalm.hub import resolve_model
m = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m")).eval()
x = torch.randint(0, 1000, (16, 200), generator=torch.Generator().manual_seed(0))
out = []
with torch.no_grad():
    m(x)
    for _ in range({repeats}):
        t = time.perf_counter(); m(x); out.append(time.perf_counter() - t)
print(out)
"""
MODES = {"one thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
         "two threads, active wait (torch's default)": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
         "two threads, OMP_WAIT_POLICY=PASSIVE": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
                                                  "OMP_WAIT_POLICY": "PASSIVE"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = {}
    for name, env in MODES.items():
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        done = subprocess.run([sys.executable, "-c", PROBE.format(repeats=args.repeats)], env={**clean, **env},
                              capture_output=True, text=True, check=True)
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name}: {sorted(rows[name])[len(rows[name]) // 2]:.3f} s per forward (median of {args.repeats})")
    if args.json:
        from metalm.runtime.files import write_atomic

        info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                   platform.processor())
        write_atomic(args.json, json.dumps({"what": "seconds per SmolLM2-135M forward, batch 16 x 200 tokens, no grad",
                                            "command": "python benchmarks/speed/omp_quiet.py", "cpu": cpu,
                                            "cores": os.cpu_count(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
