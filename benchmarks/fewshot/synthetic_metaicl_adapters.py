"""MetaICL on the synthetic in-context task of tests/test_metaicl.py, by what it trains.

Keys fixed, two labels permuted per episode: the label of a key is readable from the demonstrations
only, so a model that does not learn in context scores 0.5. A 2-layer random-init Llama is trained
with MetaICL (AdamW, 16 episodes a step, 900 steps) on its full weights, or on LoRA (PEFT's default
q/v targets or every linear module, optionally with every base weight shared), and scored in context
on 400 held-out queries every 300 steps. One line per (config, seed).

    OMP_NUM_THREADS=1 python benchmarks/fewshot/synthetic_metaicl_adapters.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import metalm


def _label_accuracy(model, params, episodes) -> float:  # noqa: ANN001
    """Rank classification among each episode's label tokens, as in-context evaluation scores it."""
    right = total = 0
    with torch.no_grad():
        for ep in episodes:
            labels = ep.support["input_ids"][:, -1].unique()
            logits = torch.func.functional_call(model, params, (ep.query["input_ids"],)).logits[:, -2]
            picked = labels[logits[:, labels].argmax(-1)]
            right += int((picked == ep.query["input_ids"][:, -1]).sum())
            total += len(picked)
    return right / total


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONFIGS = {  # name: (adapter kind, rank, alpha, targets, meta.shared, outer lr)
    "full weights, lr 3e-3": ("full", 0, 1.0, None, "none", 3e-3),
    "LoRA r4 q/v, lr 3e-3": ("lora", 4, 8.0, None, "none", 3e-3),
    "LoRA r4 q/v, lr 1e-2": ("lora", 4, 8.0, None, "none", 1e-2),
    "LoRA r16 q/v, lr 1e-2": ("lora", 16, 32.0, None, "none", 1e-2),
    "LoRA r4 q/v + all base weights shared, lr 3e-3": ("lora", 4, 8.0, None, "all", 3e-3),
    "LoRA r4 all linear, lr 1e-2": ("lora", 4, 8.0, ALL_LINEAR, "none", 1e-2),
}


def run(name: str, seed: int, steps: int) -> dict:
    kind, rank, alpha, targets, shared, lr = CONFIGS[name]
    tasks = metalm.SyntheticTasks(vocab_size=48, n_classes=2, seq_len=3, key_pool=2, label_pool=2)
    config = metalm.tiny_config("llama", vocab_size=48, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4)
    adapter = metalm.AdapterConfig(kind=kind, rank=rank or 8, alpha=alpha, target_modules=targets)
    model = metalm.apply_adapter(metalm.load_model(config, seed=seed), adapter)
    learner = metalm.build_algorithm("metaicl", model, metalm.select_parameters(model, adapter,
                                                                                metalm.MetaConfig(shared=shared)), {})
    held_out = torch.Generator().manual_seed(123)
    test = [tasks.in_context(ep, held_out) for ep in tasks.episodes(50, 1, 4, held_out)]
    opt = torch.optim.AdamW(learner.meta_parameters().values(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    curve = []
    for step in range(1, steps + 1):
        learner.step([tasks.in_context(ep, gen) for ep in tasks.episodes(16, 1, 8, gen)], opt)
        if step % 300 == 0:
            curve.append(round(_label_accuracy(model, {}, test), 3))
    return {"config": name, "seed": seed, "meta_params": sum(p.numel() for p in learner.meta_parameters().values()),
            "accuracy_every_300_steps": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--configs", default="all", help="comma-separated indices into CONFIGS, or all")
    parser.add_argument("--json")
    args = parser.parse_args()
    names = list(CONFIGS) if args.configs == "all" else [list(CONFIGS)[int(i)] for i in args.configs.split(",")]
    rows = []
    for name in names:
        for seed in map(int, args.seeds.split(",")):
            rows.append(run(name, seed, args.steps))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
