"""How many in-context rows of the held-out evaluation episodes exceed ``max_length`` tokens, so that
scoring drops their oldest demonstrations (benchmarks/RESULTS.md, "The method study").

The episodes are the evaluation study's (3-way, 2 queries per class, 10 per task, first seed); a row
is the demonstrations, the query's prompt and its longest option, tokenized by scoring's own
``token_rows`` without a cut.

    python benchmarks/fewshot/truncation.py --max-length 160 --shots 4,1
    python benchmarks/fewshot/truncation.py --max-length 160 --shots 4 --tasks meta-val
"""

from __future__ import annotations

import argparse

import torch

from metalm.data.demos import demonstrations, in_context
from metalm.eval import EvalConfig, Harness
from metalm.eval.inits import init_of
from metalm.eval.scoring import token_rows
from metalm.run import build_model, build_registry, load_train_config, task_lists


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="benchmarks/fewshot/fomaml.yaml")
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--shots", default="4,1")
    ap.add_argument("--tasks", choices=["held-out", "meta-val"], default="held-out")
    args = ap.parse_args()
    config = load_train_config(args.config)
    tok, model, _, learner = build_model(config, torch.device("cpu"))
    registry = build_registry(config)
    _, val, held = task_lists(config, registry)
    shots = [int(k) for k in args.shots.split(",")]
    harness = Harness(model, tok, init_of(learner, trained=False),
                      EvalConfig(shots=shots, episodes=10, ways=3, queries=2, methods=["icl"]))
    for k in shots:
        total = over = 0
        for name in held if args.tasks == "held-out" else val:
            n = n_over = 0
            for ep in harness.episodes(registry[name], k, 0):
                if ep.type == "generation":
                    continue
                demos = demonstrations(ep.support)
                # Scoring's own tokenization, uncut: context, prompt and options as it encodes them.
                for ctx, prompt, opts in token_rows([in_context(demos, q) for q in ep.query], tok, 10**9):
                    n_over += len(ctx) + len(prompt) + max(map(len, opts)) > args.max_length
                    n += 1
            print(f"{k}-shot {name}: {n_over}/{n}")
            total, over = total + n, over + n_over
        print(f"{k}-shot: {over} of {total} in-context rows longer than {args.max_length} tokens")


if __name__ == "__main__":
    main()
