"""The MetaICL test's margin: the share of label mass on the demonstrated labels before training and
after 100 and 150 MetaICL steps, for seeds 0-4, on this process's thread count (tests/test_metaicl.py's
construction and scorer; benchmarks/RESULTS.md, "The MetaICL test").

    OMP_NUM_THREADS=1 python benchmarks/fewshot/metaicl_test_margin.py --json benchmarks/results/metaicl_margin_1t.json
    OMP_NUM_THREADS=2 python benchmarks/fewshot/metaicl_test_margin.py --json benchmarks/results/metaicl_margin_2t.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.speed.jsonout import add_json_argument, write_json  # noqa: E402
from tests.test_metaicl import metaicl_on_shown_labels  # noqa: E402 - the test's world, not a second copy


def curve(seed: int) -> dict[str, float]:
    share, train = metaicl_on_shown_labels(seed)
    out = {"seed": seed, "before": round(share(), 4)}
    train(100)
    out["after_100"] = round(share(), 4)
    train(50)
    out["after_150"] = round(share(), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    add_json_argument(ap)
    args = ap.parse_args()
    rows = []
    for seed in map(int, args.seeds.split(",")):
        start = time.perf_counter()
        rows.append({**curve(seed), "seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)
    write_json(args.json, rows, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
