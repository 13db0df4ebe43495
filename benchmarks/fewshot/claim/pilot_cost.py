"""Per-step cost of each meta-training candidate of the claim study (#28) at 4 and 16 training shots
on the bench split, to size the study in CPU-hours before it starts.

Each (candidate, shots) trains a few outer steps on one thread in its own run folder; the first step
(tokenizer and model warm-up) is dropped and the rest give seconds and tokens per step. In-context
candidates get a context that holds the demonstrations (2,048 positions at 4 shots, 8,192 at 16).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fewshot/claim/pilot_cost.py \
        --json benchmarks/results/claim_pilot_cost.json

Resumable: a (candidate, shots) already in the JSON is not measured again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
CANDIDATES = ["multitask", "fomaml", "reptile", "fomaml_icl", "channel_metaicl"]
IN_CONTEXT = {"fomaml_icl", "channel_metaicl"}


def config_path(name: str) -> Path:
    """A candidate of this folder by name, or any config by path (the bench rows of benchmarks/fewshot/bench)."""
    return HERE / f"{name}.yaml" if "/" not in name and not name.endswith(".yaml") else Path(name).resolve()


def measure(name: str, shots: int, steps: int, runs: Path, extra: tuple[str, ...] = ()) -> dict:
    """Train ``steps`` outer steps of one candidate at ``shots`` (``extra``: more key=value overrides, e.g.
    ``autocast=bf16``); seconds and tokens per step (step 1 dropped)."""
    run_dir = runs / "-".join([config_path(name).stem, str(shots), *(e.replace("=", "_") for e in extra)])
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [f"sampler.shots={shots}", "checkpoint_every=1000", *extra]
    if name in IN_CONTEXT:
        overrides.append(f"collate.max_length={2048 if shots <= 4 else 8192}")
    cmd = [str(Path(sys.executable).parent / "metalm"), "train", str(config_path(name)), "--run-dir", str(run_dir),
           "--max-steps", str(steps), "--quiet", *overrides]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in open(run_dir / "log.jsonl", encoding="utf-8")]
    rows = [r for r in rows if "seconds" in r and r["step"] > 1]
    seconds = [r["seconds"] for r in rows]
    tokens = [sum(r["tokens"]) for r in rows]
    return {"steps_measured": len(rows), "seconds_per_step": statistics.median(seconds),
            "seconds_mean": statistics.fmean(seconds), "tokens_per_step": statistics.fmean(tokens),
            "hours_per_2000_steps": statistics.fmean(seconds) * 2000 / 3600, "overrides": overrides,
            "query_loss": [r.get("query_loss") for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--shots", default="4,16")
    ap.add_argument("--candidates", default=",".join(CANDIDATES),
                    help="names of this folder's configs, or config paths (benchmarks/fewshot/bench/*.yaml)")
    ap.add_argument("--runs", default="runs/claim-pilot")
    args = ap.parse_args()
    out = Path(args.json)
    result = json.loads(out.read_text()) if out.is_file() else {"threads": os.environ.get("OMP_NUM_THREADS"),
                                                                 "steps": args.steps, "rows": {}}
    for shots in [int(s) for s in args.shots.split(",")]:
        for name in args.candidates.split(","):
            key = f"{config_path(name).stem}/{shots}"
            if key in result["rows"]:
                continue
            result["rows"][key] = measure(name, shots, args.steps, Path(args.runs))
            print(key, json.dumps(result["rows"][key]), flush=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1) + "\n")
            os.replace(tmp, out)


if __name__ == "__main__":
    main()
