"""Scoring speed: rank classification with a shared prompt vs naive, greedy generation with a KV cache vs without.

``metalm.eval.scoring.option_scores`` with ``shared_prompt`` on and off, on the same examples and
weights (SmolLM2-135M by default): the naive path runs ``prompt + option`` as one row per option,
so its cost grows with (labels x prompt length); the shared path runs each prompt once. Prompts
are ~``--prompt-tokens`` tokens of text (an in-context prompt's length; the content does not
change the cost), options are label words. Scores are checked equal first. Then greedy generation
(``greedy_generate``) of ``--new-tokens`` tokens for the same prompts, each new token on the KV
cache of the ones before it vs the whole sequence again (the outputs are checked equal).

    python benchmarks/speed/scoring.py --labels 2,5,10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from jsonout import add_json_argument, write_json  # same directory
from transformers import AutoTokenizer

import metalm
from metalm.data.collate import CollateConfig
from metalm.data.episode import Example
from metalm.eval.scoring import greedy_generate, option_scores
from metalm.hub import resolve_model

LABELS = ["positive", "negative", "neutral", "sports", "business", "science", "world", "politics", "health",
          "entertainment", "travel", "education"]


def examples(tokenizer, n: int, labels: int, prompt_tokens: int, seed: int = 0) -> list[Example]:  # noqa: ANN001
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1000, tokenizer.vocab_size, (prompt_tokens,), generator=g).tolist()
        prompt = tokenizer.decode(ids) + "\nLabel:"
        options = [f" {w}" for w in LABELS[:labels]]
        out.append(Example(prompt, options[0], options, 0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--labels", default="2,5,10")
    parser.add_argument("--examples", type=int, default=8, help="query examples scored per call")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32, help="rows per forward (option_scores' batch_size)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per prompt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_json_argument(parser)
    args = parser.parse_args()
    device = torch.device(args.device)
    path = resolve_model(args.model)
    model = metalm.load_model(path, device=device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    params = dict(model.named_parameters())
    config = CollateConfig(max_length=args.prompt_tokens + 64)
    print(f"{args.model}, {args.examples} examples, prompts of ~{args.prompt_tokens} tokens, {device}")
    print("| labels | naive s | shared prompt s | naive / shared |")
    rows = []
    print("|---|---|---|---|")
    for n in (int(x) for x in args.labels.split(",")):
        exs = examples(tokenizer, args.examples, n, args.prompt_tokens)

        def run(shared: bool, exs: list[Example] = exs) -> list[list[float]]:
            return option_scores(model, params, exs, tokenizer, config, batch_size=args.batch_size,
                                 shared_prompt=shared)

        a, b = run(False), run(True)
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-3), "scores differ"
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for shared in (False, True):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run(shared)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[shared].append(time.perf_counter() - start)
        naive, shared = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {n} | {naive:.3f} | {shared:.3f} | {naive / shared:.2f} |", flush=True)
        rows.append({"table": "rank classification", "labels": n, "naive_seconds": naive, "shared_seconds": shared,
                     "speedup": naive / shared})
    prompts = [ex.prompt for ex in examples(tokenizer, args.examples, 2, args.prompt_tokens)]

    def generate(cached: bool) -> list[str]:
        return greedy_generate(model, params, prompts, tokenizer, max_length=args.prompt_tokens + 64,
                               max_new_tokens=args.new_tokens, stop="", kv_cache=cached)

    assert generate(False) == generate(True), "generations differ"
    gen: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for cached in (False, True):
            start = time.perf_counter()
            generate(cached)
            gen[cached].append(time.perf_counter() - start)
    full, cached = statistics.median(gen[False]), statistics.median(gen[True])
    print(f"\ngreedy generation, {args.new_tokens} new tokens for each of the {len(prompts)} prompts")
    print("| whole sequence per token s | KV cache s | speed-up |")
    print("|---|---|---|")
    print(f"| {full:.3f} | {cached:.3f} | {full / cached:.2f} |", flush=True)
    rows.append({"table": "greedy generation", "new_tokens": args.new_tokens, "whole_sequence_seconds": full,
                 "kv_cache_seconds": cached, "speedup": full / cached})
    write_json(args.json, rows, model=args.model, examples=args.examples, prompt_tokens=args.prompt_tokens,
               repeats=args.repeats)


if __name__ == "__main__":
    main()
