"""Per-step cost of each meta-training candidate of the claim study (PLAN.md) at 4 and 16 training shots on
the split its configs name (the pool split), to size the study in CPU-hours before it starts.

Each (candidate, shots) trains a few outer steps on one thread in its own run folder; the first step
(tokenizer and model warm-up) is dropped and the rest give seconds and tokens per step. In-context
candidates get a context that holds the demonstrations (2,048 positions at 4 shots, 8,192 at 16).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fewshot/claim/pilot_cost.py \
        --json benchmarks/results/claim_pilot_cost.json

With ``--eval-shots``, each candidate's run trained at the first of ``--shots`` is then scored as the
study scores it (protocol bench_pool, its meta-val tasks, one episode per task and shot count, its own
rows with calibration where it applies) and the evaluation's seconds per episode are recorded: what a
learning-curve point and the comparison cost per episode, all the candidate's rows together. Only
seconds are kept (the accuracies of a run trained a few steps mean nothing).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fewshot/claim/pilot_cost.py --shots 4 --eval-shots 4,16 \
        --json benchmarks/results/claim_pool_cost.json

``--set autocast=float32`` measures the same steps in another precision (keys ``NAME/4/autocast=float32``):
bf16 is about 2.3x faster per step on a CPU with AVX512-BF16 and can be slower on one without.

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
import tempfile
from pathlib import Path

from metalm.run import load_train_config, run_kind
from metalm.runtime.files import write_atomic

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
CANDIDATES = ["multitask", "fomaml", "reptile", "fomaml_icl", "channel_metaicl", "metaicl_direct", "hyperlora",
              "lora_library"]
IN_CONTEXT = {"fomaml_icl", "channel_metaicl", "metaicl_direct"}
#: Fine-tuning's budget for measuring a curve point's cost before the baseline job has chosen one.
FT_UPPER = ["finetune_optimizers=[sgd]", "finetune_lrs=[0.3]", "finetune_steps=[10]"]


def config_path(name: str) -> Path:
    """A candidate of this folder by name, or any config by path (the bench rows of benchmarks/fewshot/bench)."""
    return HERE / f"{name}.yaml" if "/" not in name and not name.endswith(".yaml") else Path(name).resolve()


def run_folder(runs: Path, name: str, shots: int | str, extra: tuple[str, ...] = ()) -> Path:
    """Where one candidate trains at ``shots`` with the overrides ``extra``."""
    return runs / "-".join([config_path(name).stem, str(shots), *(e.replace("=", "_") for e in extra)])


def measure(name: str, shots: int, steps: int, runs: Path, extra: tuple[str, ...] = ()) -> dict:
    """Train ``steps`` outer steps of one candidate at ``shots`` (``extra``: more key=value overrides, e.g.
    ``autocast=bf16``); seconds and tokens per step (step 1 dropped)."""
    run_dir = run_folder(runs, name, shots, extra)
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


def measure_eval(name: str, run_dir: Path, shots: int, protocol: str, tasks: str = "", per_row: bool = False
                 ) -> dict:
    """Score ``run_dir``'s last checkpoint on the protocol's meta-val tasks, one episode each, at ``shots``, as
    a curve point scores it: its own rows (``calibrate_trained``: their calibrated twins too), fine-tuning
    and the ``@ft`` rows at a 10-step budget (the grid's most steps: an upper bound). Seconds per episode;
    ``per_row``: instead, what one episode costs each row on its own (``cost_episodes: 1``: adapting and
    scoring with nothing shared), the cost of scoring a single chosen row."""
    bin_dir = Path(sys.executable).parent
    kind = run_kind(load_train_config(run_dir / "config.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        cmd = [str(bin_dir / "metalm"), "eval", "--run-dir", str(run_dir), "--protocol", protocol, "--evaluate-on",
               "meta_val", "--shots", str(shots), "--methods", f"finetune,{kind}", "--json", str(out), "--quiet",
               "--episodes", "1", "--seeds", "1", f"cost_episodes={int(per_row)}", "calibrate_trained=true", *FT_UPPER]
        if tasks:
            cmd += ["--tasks", tasks]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        report = json.loads(out.read_text())
    episodes = len(report["tasks"])
    if per_row:
        costs = report["episode_cost"]  # {row: {shots: {"seconds", "forward_tokens", "episodes"}}}
        return {"candidate": config_path(name).stem, "shots": shots, "tasks": report["tasks"],
                "seconds_per_episode": {row: c[str(shots)]["seconds"] for row, c in costs.items()},
                "forward_tokens": {row: c[str(shots)]["forward_tokens"] for row, c in costs.items()}}
    return {"candidate": config_path(name).stem, "shots": shots, "episodes": episodes,
            "rows": sorted({r["method"] for r in report["macro"]}),
            "seconds": report["measuring_seconds"], "seconds_per_episode": report["measuring_seconds"] / episodes,
            "truncated": report.get("truncated")}


def save(result: dict, out: Path) -> None:
    write_atomic(out, json.dumps(result, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--shots", default="4,16")
    ap.add_argument("--candidates", default=",".join(CANDIDATES),
                    help="names of this folder's configs, or config paths")
    ap.add_argument("--runs", default="runs/claim-pilot")
    ap.add_argument("--eval-shots", default="", help="also score each run (trained at the first --shots) at these")
    ap.add_argument("--protocol", default="bench_pool")
    ap.add_argument("--eval-tasks", default="", help="score these tasks (comma-separated) instead of all of meta-val")
    ap.add_argument("--per-row", action="store_true",
                    help="with --eval-shots: each row's cost on its own per episode (key row_eval), not the point's")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more training overrides (e.g. autocast=float32), named in the rows' keys")
    args = ap.parse_args()
    suffix = "".join(f"/{kv}" for kv in args.set)
    out = Path(args.json)
    result = json.loads(out.read_text()) if out.is_file() else {"threads": os.environ.get("OMP_NUM_THREADS"),
                                                                 "steps": args.steps, "rows": {}}
    for shots in [int(s) for s in args.shots.split(",")]:
        for name in args.candidates.split(","):
            key = f"{config_path(name).stem}/{shots}{suffix}"
            if key in result["rows"]:
                continue
            result["rows"][key] = measure(name, shots, args.steps, Path(args.runs), tuple(args.set))
            print(key, json.dumps(result["rows"][key]), flush=True)
            save(result, out)
    first = args.shots.split(",")[0]
    for shots in [int(s) for s in args.eval_shots.split(",") if s]:
        for name in args.candidates.split(","):
            key = f"{config_path(name).stem}/{shots}"
            section = "row_eval" if args.per_row else "eval"
            if key in result.setdefault(section, {}):
                continue
            run_dir = run_folder(Path(args.runs), name, first, tuple(args.set))
            result[section][key] = measure_eval(name, run_dir, shots, args.protocol, args.eval_tasks, args.per_row)
            print(section, key, json.dumps(result[section][key]), flush=True)
            save(result, out)


if __name__ == "__main__":
    main()
