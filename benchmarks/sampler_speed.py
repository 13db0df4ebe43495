"""Time and memory of drawing episodes from a split (needs `metalm download bigbench bbc-news shakespeare`).

Usage: python benchmarks/sampler_speed.py [--split default] [--episodes 10000] [--ways 5 --shots 4 --queries 4]
       [--json OUT]

Reports the time to load the split's meta-train tasks, the time to draw and render the episodes,
and the process's resident memory after loading, after 10% of the episodes and at the end (the
sampler keeps no episodes, so memory should stay flat while sampling).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent / "speed"))
from jsonout import add_json_argument, write_json  # noqa: E402

from metalm.data import SamplerConfig, default_registry, load_split, split_sampler  # noqa: E402


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", default="default")
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--queries", type=int, default=4)
    add_json_argument(parser)
    args = parser.parse_args()

    registry = default_registry()
    split = load_split(args.split, registry)
    cfg = SamplerConfig(ways=args.ways, shots=args.shots, queries=args.queries, drop_small_classes=True)
    start = time.perf_counter()
    sampler = split_sampler(split, "meta_train", registry, cfg, seed=0)
    load_s = time.perf_counter() - start
    rss_loaded = rss_mb()
    start = time.perf_counter()
    examples = 0
    rss_early = rss_loaded
    for i in range(args.episodes):
        ep = sampler.sample()
        examples += len(ep.support) + len(ep.query)
        if i == args.episodes // 10:
            rss_early = rss_mb()
    sample_s = time.perf_counter() - start
    print(f"split {args.split}: {len(split.meta_train)} meta-train tasks, {args.ways}-way {args.shots}-shot "
          f"{args.queries}-query")
    print(f"load tasks:        {load_s:8.2f} s")
    print(f"sample {args.episodes} episodes: {sample_s:8.2f} s  ({1e3 * sample_s / args.episodes:.2f} ms/episode, "
          f"{examples} rendered examples)")
    rss_end = rss_mb()
    print(f"RSS after loading {rss_loaded:.0f} MB, after {args.episodes // 10 + 1} episodes {rss_early:.0f} MB, "
          f"at the end {rss_end:.0f} MB")
    write_json(args.json, [{"split": args.split, "tasks": len(split.meta_train), "ways": args.ways, "shots": args.shots,
                            "queries": args.queries, "episodes": args.episodes, "load_s": load_s,
                            "sample_s": sample_s, "ms_per_episode": 1e3 * sample_s / args.episodes,
                            "examples": examples, "rss_loaded_mb": rss_loaded, "rss_early_mb": rss_early,
                            "rss_end_mb": rss_end}])


if __name__ == "__main__":
    main()
