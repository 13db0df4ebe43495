"""Peak memory of a meta-gradient on SmolLM2-135M (LoRA r=8 on the top 4 layers) by inner steps k:
MAML, MAML with ``inner.recompute``, iMAML and FOMAML.

One episode of a task at the FOMAML config's shapes (3-way 2-shot, 2 queries per class, max_length 128),
one fresh process per point; the peak is the growth of the peak resident set over the footprint
after one forward (CPU) or ``max_memory_allocated`` (CUDA), the time one meta-gradient after a
warm-up one.

    python benchmarks/speed/memory_smollm2.py --steps 1,2,4,8 --json benchmarks/results/memory_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from peak import PeakGrowth

VARIANTS = {"MAML": {"name": "maml", "inner": {"first_order": False}},
            "MAML recompute": {"name": "maml", "inner": {"first_order": False, "recompute": True}},
            "iMAML": {"name": "imaml", "inner": {"proximal": 1.0}},
            "FOMAML": {"name": "fomaml", "inner": {"first_order": True}}}


def child(variant: str, k: int, task: str) -> dict[str, float]:
    from metalm.data import EpisodeSampler, tensorize
    from metalm.losses import lm_loss
    from metalm.run import build_model, build_registry, load_train_config

    spec = VARIANTS[variant]
    algorithm = {"name": spec["name"], "inner": {"steps": k, "lr": 0.1, **spec["inner"]}}
    config = load_train_config("benchmarks/fewshot/fomaml.yaml", {"algorithm": algorithm})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    registry = build_registry(config)
    tokenizer, model, _, learner = build_model(config, device)
    episode = tensorize(EpisodeSampler([registry[task]], config.sampler, seed=0).sample(), tokenizer,
                        config.collate, learner.queries).to(device)
    with torch.no_grad():
        lm_loss(model, {}, episode.support)
    peak = PeakGrowth(device)
    learner.meta_gradients([episode])
    for p in learner.meta_parameters().values():
        p.grad = None
    start = time.perf_counter()
    learner.meta_gradients([episode])
    seconds = time.perf_counter() - start
    return {"mib": peak.mib(), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="1,2,4,8")
    ap.add_argument("--task", default="intent_recognition")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(spec["variant"], spec["k"], args.task)))
        return
    rows = []
    print(f"SmolLM2-135M, LoRA r=8 top 4 layers, one {args.task} episode (FOMAML config's shapes); "
          "MiB / s per meta-gradient")
    print("| k | " + " | ".join(f"{v} MiB | {v} s" for v in VARIANTS) + " |")
    print("|---|" + "---|---|" * len(VARIANTS))
    for k in (int(x) for x in args.steps.split(",")):
        cells = []
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--task", args.task, "--child",
                                  json.dumps({"variant": variant, "k": k})], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"variant": variant, "k": k, **result})
            cells.append(f"{result['mib']:.0f} | {result['seconds']:.2f}")
        print(f"| {k} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"task": args.task, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
