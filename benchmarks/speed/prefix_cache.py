"""Frozen-prefix cache vs none: inner-loop time with LoRA on the top K layers (one process, same batch).

The cached variant's time includes building the cache (one no-grad forward of every layer). Both
variants give the same adapted weights (checked here too).

    python benchmarks/speed/prefix_cache.py --model smollm2-135m --top 4 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from jsonout import add_json_argument, write_json  # same directory

import metalm
from metalm import AdapterConfig
from metalm.hub import resolve_model
from metalm.losses import cache_prefix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--top", type=int, default=4, help="LoRA on the top K decoder layers")
    parser.add_argument("--steps", type=int, default=5, help="inner steps k")
    parser.add_argument("--rows", type=int, default=12, help="support examples")
    parser.add_argument("--length", type=int, default=128, help="tokens per example")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA), as the trainer uses there")
    add_json_argument(parser)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    adapter = AdapterConfig(rank=8, alpha=16, layers=f"top:{args.top}")
    model = metalm.apply_adapter(metalm.load_model(resolve_model(args.model), device=device), adapter).to(device)
    sel = metalm.select_parameters(model, adapter)
    sel.apply(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (args.rows, args.length), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, -2:] = ids[:, -2:]
    support = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    support = {k: v.to(device) for k, v in support.items()}
    layer = sel.lowest_adapted_layer()

    def run(cached: bool) -> tuple[float, dict]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            batch = cache_prefix(model, support, layer) if cached else support
            out = metalm.adapt(model, sel.fast_params(model), batch, steps=args.steps, lr=0.1,
                               first_order=args.first_order)
            loss = metalm.lm_loss(model, out, batch)
            torch.autograd.grad(loss, list(sel.fast_params(model).values()))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    run(False), run(True)  # warm-up
    plain = [run(False) for _ in range(args.repeats)]
    cached = [run(True) for _ in range(args.repeats)]
    same = all(torch.allclose(plain[0][1][n], cached[0][1][n], atol=1e-2 if args.bf16 else 1e-5) for n in plain[0][1])
    t_plain, t_cached = statistics.median(t for t, _ in plain), statistics.median(t for t, _ in cached)
    n_layers = metalm.models.decoder_layers(model)[1]
    print(f"{args.model}: LoRA on the top {args.top} of {n_layers} layers (cache below layer {layer}), "
          f"k={args.steps} {'first' if args.first_order else 'second'}-order inner steps + meta-gradient, "
          f"{args.rows} x {args.length} tokens, {device}; same adapted weights: {same}")
    print(f"| variant | seconds (median of {args.repeats}) | speed-up |")
    print("|---|---|---|")
    print(f"| full forward every step | {t_plain:.3f} | 1.00x |")
    print(f"| frozen-prefix cache | {t_cached:.3f} | {t_plain / t_cached:.2f}x |")
    write_json(args.json, [{"variant": "full forward every step", "seconds": t_plain},
                           {"variant": "frozen-prefix cache", "seconds": t_cached, "speedup": t_plain / t_cached}],
               same_adapted_weights=bool(same), cache_below_layer=layer, layers=n_layers)


if __name__ == "__main__":
    main()
