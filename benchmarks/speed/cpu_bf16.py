"""bf16 autocast against float32 on this CPU, one thread, in one process: SmolLM2-135M's forward pass, and a
meta-training step of claim candidates (`TrainConfig.autocast`), the variants interleaved so both see the
same load.

    OMP_NUM_THREADS=1 python benchmarks/speed/cpu_bf16.py --json benchmarks/results/cpu_bf16.json \
        --candidates multitask,fomaml,channel_metaicl

A CPU without AVX512-BF16 or AMX gains little or loses (bf16 is emulated): measure before choosing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted({f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f" {f}" in text})


def forward(lengths: list[int], repeats: int) -> list[dict]:
    """Seconds of one forward pass of SmolLM2-135M at each length, float32 and under bf16 autocast, with the
    largest difference of the next-token log-probabilities on the same random tokens."""
    from metalm.hub import resolve_model
    from metalm.models import load_model

    model = load_model(resolve_model("smollm2-135m"))
    rows = []
    for n in lengths:
        ids = torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(n))
        times: dict[str, list[float]] = {"float32": [], "bf16": []}
        logits = {}
        with torch.no_grad():
            for _ in range(repeats + 1):  # the first of each: warm-up, dropped
                for mode in ("float32", "bf16"):
                    start = time.perf_counter()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                        logits[mode] = model(input_ids=ids).logits.float()
                    times[mode].append(time.perf_counter() - start)
        diff = (logits["float32"].log_softmax(-1) - logits["bf16"].log_softmax(-1)).abs().max().item()
        f32, b16 = (sum(times[m][1:]) / repeats for m in ("float32", "bf16"))
        rows.append({"tokens": n, "float32_s": f32, "bf16_s": b16, "speedup": f32 / b16,
                     "max_logprob_diff": diff})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--lengths", default="512,2048")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--candidates", default="multitask,fomaml", help="configs of benchmarks/fewshot/claim")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--runs", default="runs/cpu-bf16")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    spec = importlib.util.spec_from_file_location("pilot_cost", ROOT / "benchmarks/fewshot/claim/pilot_cost.py")
    pilot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pilot)
    result = {"command": "python benchmarks/speed/cpu_bf16.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()
                                                                           if k != "json"),
              "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "cpu_flags": cpu_flags(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "forward": forward([int(n) for n in args.lengths.split(",")], args.repeats), "training": {}}
    for name in [c for c in args.candidates.split(",") if c]:
        row = {}
        for mode in ("float32", "bf16"):  # interleaved per candidate
            row[mode] = pilot.measure(name, 4, args.steps, Path(args.runs), (f"autocast={mode}",))
        row["speedup"] = row["float32"]["seconds_mean"] / row["bf16"]["seconds_mean"]
        result["training"][name] = row
        print(name, json.dumps({m: row[m]["seconds_mean"] for m in ("float32", "bf16")}), flush=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
