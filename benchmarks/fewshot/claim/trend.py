"""Would more steps or more meta-train tasks close the claim's gap? The learning curves and the pool curve read
as a projection (PLAN.md: "the curve points say whether meta-val accuracy still rises at the last point (a
projection, not a claim)"; issue 44, deliverable 4).

For each candidate, the row the checkpoint rule reads (its best trained row at 16 shots at the last curve
point; a tie to 3 decimals: the row listed first) is followed along the curve, and its last gain (the last
point minus the one before, paired on the same meta-val episodes: both points score the same episodes) is
given with its 95% interval: **rising** when the interval is above zero. The pool curve (the designated
candidate on 25 / 50 / 100% of the meta-train tasks) is read the same way, its last gain being 50 -> 100%.
With the comparison's gap at 16 shots (``claim.json``'s ``target``: the designated row's paired difference
from the best baseline, against the 0.05 margin), a gain per doubling projects the doublings that would close
the gap, ``(margin - diff) / gain``, only where the gain is rising (otherwise none is projected). It is a
projection: a gain on meta-val (4 BLiMP tasks) carried to held-out tasks, and a log-linear curve assumed
from two points.

    python benchmarks/fewshot/claim/trend.py multitask hyperlora ... --pool multitask \
        --claim benchmarks/results/claim.json --json benchmarks/results/claim_trend.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from choose import CURVES, curve, macro  # noqa: E402

from metalm.eval.fewshot import BASELINES  # noqa: E402
from metalm.eval.stats import paired  # noqa: E402
from metalm.eval.summary import macro_units  # noqa: E402
from metalm.runtime.files import write_atomic  # noqa: E402

SHOTS = 16
POOL = {25: "_pool25", 50: "_pool50", 100: ""}  # the pool curve's rungs: percent -> run name suffix


def followed_row(report: dict[str, Any], shots: int = SHOTS) -> str:
    """The trained row (not a baseline) with the highest macro at ``shots``; a tie to 3 decimals: the first."""
    rows = [r for r in report["macro"] if r["shots"] == shots and r["method"] not in BASELINES]
    if not rows:
        raise SystemExit(f"no trained row at {shots} shots in the curve point")
    top = max(round(r["accuracy"], 3) for r in rows)
    return next(r["method"] for r in rows if round(r["accuracy"], 3) == top)


def gain(later: dict[str, Any], earlier: dict[str, Any], row: str, shots: int = SHOTS) -> dict[str, Any]:
    """``row``'s macro at ``later`` minus at ``earlier``, paired over the macro units (per seed and episode
    index, the mean over tasks), with ``lo``, ``hi`` and ``rising`` (``lo > 0``).

    Raises:
        SystemExit: When the two points are not scored on the same tasks and seeds."""
    if later["tasks"] != earlier["tasks"] or later["seeds"]["seeds"] != earlier["seeds"]["seeds"]:
        raise SystemExit("the two points are not scored on the same tasks and seeds: not paired")
    test = paired(macro_units(later, row, shots), macro_units(earlier, row, shots))
    lo, hi = test["diff"] - test["ci95"], test["diff"] + test["ci95"]
    return {"diff": test["diff"], "ci95": test["ci95"], "lo": lo, "hi": hi, "n": test["n"], "rising": bool(lo > 0)}


def along(points: dict[Any, dict[str, Any]], shots: int = SHOTS) -> dict[str, Any]:
    """The followed row's macro at each point (keys in order) and its last gain (``None`` with one point)."""
    keys = sorted(points)
    row = followed_row(points[keys[-1]], shots)
    out: dict[str, Any] = {"row": row, "points": {str(k): macro(points[k], row, shots) for k in keys}}
    out["last_gain"] = gain(points[keys[-1]], points[keys[-2]], row, shots) if len(keys) > 1 else None
    return out


def doublings(trend: dict[str, Any], diff: float, margin: float) -> float | None:
    """Doublings (of steps, or of meta-train tasks) that would carry ``diff`` to ``margin`` at the last gain,
    read as a gain per doubling (the points are a doubling apart); ``None`` unless the gain is rising."""
    g = trend.get("last_gain")
    if not g or not g["rising"]:
        return None
    return max(0.0, (margin - diff) / g["diff"])


def pool_points(name: str, folder: Path = CURVES) -> dict[int, dict[str, Any]]:
    """The pool curve's points of candidate ``name``: percent -> the last curve point of that rung's run."""
    out = {}
    for pct, suffix in POOL.items():
        try:
            found = curve(Path(f"runs/long-{name}{suffix}"), folder)
        except SystemExit:
            continue
        out[pct] = found[max(found)]
    return out


def trend(names: list[str], pool: str | None, claim: dict[str, Any] | None, folder: Path = CURVES
          ) -> dict[str, Any]:
    """The report (module doc): ``candidates`` (name -> :func:`along` of its curve), ``pool`` and, with the
    comparison, ``target`` with the doublings projected from each."""
    out: dict[str, Any] = {"shots": SHOTS, "candidates": {n: along(curve(Path(f"runs/long-{n}"), folder))
                                                          for n in names}}
    if pool is not None:
        points = pool_points(pool, folder)
        out["pool"] = {"candidate": pool, **along(points)} if len(points) > 1 else None
    if claim is not None:
        t = claim["target"]
        out["target"] = {**t, "steps_doublings": {n: doublings(c, t["diff"], t["margin"])
                                                  for n, c in out["candidates"].items()},
                         "pool_doublings": doublings(out["pool"], t["diff"], t["margin"]) if out.get("pool") else None}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="candidates (their curve points NAME.step-N.json)")
    parser.add_argument("--pool", help="the candidate whose pool curve is read (NAME_pool25 / 50 and NAME)")
    parser.add_argument("--claim", type=Path, help="claim.json: the gap to project (its target)")
    parser.add_argument("--curves", type=Path, default=CURVES)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    claim = json.loads(args.claim.read_text(encoding="utf-8")) if args.claim else None
    report = trend(args.names, args.pool, claim, args.curves)
    for name, c in report["candidates"].items():
        g = c["last_gain"]
        last = f"last gain {g['diff']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}]" if g else "one point"
        print(f"{name} ({c['row']}): " + ", ".join(f"{k}: {v:.3f}" for k, v in c["points"].items()) + f"; {last}")
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
