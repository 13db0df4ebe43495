"""The claim study's size in CPU-hours, and the rule that shrinks it to its budget (PLAN.md, 2026-12-06),
as code: written before any candidate trained, from measured costs only.

Costs (``benchmarks/results/claim_pool_cost.json``, ``pilot_cost.py``; one thread): seconds per training
step of each candidate at 4 shots (``rows["NAME/4"]["seconds_mean"]``); seconds per meta-val episode of
all a candidate's rows together (its rows, their calibrated twins, fine-tuning and the @ft rows:
``eval["NAME/S"]["seconds_per_episode"]``, S = 4, 16); and what one episode costs each row on its own
(``row_eval["NAME/S"]["seconds_per_episode"][ROW]``). The study at a rung (steps S, curve points P,
curve units U):

* training: every candidate S steps; the pilot trains FOMAML and Reptile to 15% of S (300 of 2,000)
  and the chosen one goes on (counted as the dearer of the two going on);
* the pilot's scoring: both arms' rows on meta-val at 4 shots, 30 units;
* the curves: P points per candidate (every S/P steps), all its rows on meta-val at 16 shots (the
  checkpoint rule reads 16 shots), U units per task; then the chosen checkpoint at 4 and 16 shots,
  30 units (the row choices read both);
* the pool curve: the designated candidate trained twice more (25% and 50% of meta-train), each scored
  once on meta-val at 16 shots with U units (counted as the dearest candidate);
* the comparison: each candidate's row chosen on meta-val (one per shot count; counted as its dearest
  row alone) on the held-out tasks at 1, 4 and 16 shots, 30 units, paired with the baseline table's
  episodes (the baselines are not scored again); 1 shot counted at 4 shots' cost, a held-out episode
  at a meta-val episode's (an assumption: the meta-val tasks are BLiMP sentences, the held-out tasks
  CLINC and TREC questions of similar length besides BLiMP).

The rule: the first rung of :data:`RUNGS` whose total is within :data:`BUDGET_HOURS` is the study's; if none
is, the last, and the overrun is reported as missed.

    python benchmarks/fewshot/claim/sizing.py benchmarks/results/claim_pool_cost.json --json \
        benchmarks/results/claim_sizing.json
    python benchmarks/fewshot/claim/sizing.py steps benchmarks/results/claim_sizing.json  # the curve steps
    python benchmarks/fewshot/claim/sizing.py rung benchmarks/results/claim_sizing.json   # meta-val tasks, seeds
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[3]
BUDGET_HOURS = 30.0
UNITS = 30  # the comparison's and the pilot's units per task and shot count (10 episodes x 3 seeds)
PILOT = ("fomaml", "reptile")
PILOT_FRACTION = 0.15
#: In PLAN.md's order (a tie in the designation goes to the one listed first).
CANDIDATES = ("channel_metaicl", "metaicl_direct", "multitask", "fomaml", "reptile", "fomaml_icl", "hyperlora",
              "lora_library")


class Rung(NamedTuple):
    steps: int
    points: int  # learning-curve points per candidate, every steps / points
    curve_units: int  # units per meta-val task and shot count of every meta-val scoring but the pilot's
    val_tasks: int  # meta-val tasks every meta-val scoring uses (:func:`val_subset`)


#: From the anchors' budget down, in the order the rule tries them (PLAN.md, 2026-12-06, revised the same day
#: before any candidate trained: the first ladder's evaluation could not fit at any number of steps).
RUNGS = (Rung(2000, 4, 10, 16), Rung(1000, 4, 10, 16), Rung(500, 4, 10, 8), Rung(500, 2, 10, 8),
         Rung(500, 2, 10, 4), Rung(300, 2, 10, 4))


def val_subset(meta_val: list[str], family: dict[str, str], n: int) -> list[str]:
    """The ``n`` meta-val tasks the study scores: families in turn (sorted by name), each family's tasks in
    the split's order, so every family keeps its share (BLiMP syntax and semantics: n/2 each)."""
    by_family: dict[str, list[str]] = {}
    for task in meta_val:
        by_family.setdefault(family[task], []).append(task)
    order = [t for group in zip(*(by_family[f] for f in sorted(by_family)), strict=False) for t in group]
    rest = [t for t in meta_val if t not in order]  # a larger family's tail, after the turns
    return (order + rest)[:n]


def size(costs: dict[str, Any], candidates: list[str], rung: Rung, test_tasks: int) -> dict[str, float]:
    """CPU-hours of each part of the study at ``rung`` (``candidates``: the config names, the pilot's two
    arms among them)."""
    val_tasks = rung.val_tasks
    missing = [f"{part}[{c}/{k}]" for part, k in (("rows", 4), ("eval", 4), ("eval", 16), ("row_eval", 4),
                                                      ("row_eval", 16)) for c in candidates
               if f"{c}/{k}" not in costs.get(part, {})]
    if missing:
        raise SystemExit(f"the cost file has no {missing[0]} (and {len(missing) - 1} more): run pilot_cost.py "
                         "--shots 4, then --eval-shots 4,16, then --eval-shots 4,16 --per-row")
    step = {c: costs["rows"][f"{c}/4"]["seconds_mean"] for c in candidates}
    episode = {(c, s): costs["eval"][f"{c}/{s}"]["seconds_per_episode"] for c in candidates for s in (4, 16)}
    alone = {(c, s): max(v for row, v in costs["row_eval"][f"{c}/{s}"]["seconds_per_episode"].items()
                         if row != "finetune")  # the baseline is read from the baseline table
             for c in candidates for s in (4, 16)}
    going = [c for c in candidates if c not in PILOT]
    arm = max(PILOT, key=lambda c: step[c])  # the dearer arm goes on: an upper bound
    training = sum(step[c] for c in going) * rung.steps + step[arm] * rung.steps \
        + sum(step[c] for c in PILOT if c != arm) * PILOT_FRACTION * rung.steps
    pilot = sum(episode[c, 4] for c in PILOT) * val_tasks * UNITS
    curved = [*going, arm]
    curves = sum(episode[c, 16] * rung.points + episode[c, 4] + episode[c, 16]
                 for c in curved) * val_tasks * rung.curve_units
    dearest = max(curved, key=lambda c: step[c] * rung.steps + episode[c, 16] * val_tasks * rung.curve_units)
    pool = 2 * (step[dearest] * rung.steps + episode[dearest, 16] * val_tasks * rung.curve_units)
    comparison = sum(2 * alone[c, 4] + alone[c, 16] for c in curved) * test_tasks * UNITS
    parts = {"training": training, "pilot": pilot, "curves": curves, "pool_curve": pool, "comparison": comparison}
    hours = {k: v / 3600 for k, v in parts.items()}
    hours["total"] = sum(hours.values())
    return hours


def choose(costs: dict[str, Any], candidates: list[str], test_tasks: int, budget: float = BUDGET_HOURS
           ) -> tuple[Rung | None, list[dict[str, Any]]]:
    """The rule: the first rung within ``budget`` CPU-hours (``None`` when none is), and every rung's size."""
    table = [{"rung": r._asdict(), **size(costs, candidates, r, test_tasks)} for r in RUNGS]
    chosen = next((r for r, row in zip(RUNGS, table, strict=True) if row["total"] <= budget), None)
    return chosen, table


def curve_steps(rung: dict[str, int]) -> list[int]:
    """The steps of a rung's learning-curve points (every ``steps / points``): ``[150, 300]`` at 300, 2."""
    return [rung["steps"] * i // rung["points"] for i in range(1, rung["points"] + 1)]


#: The curve steps without a sizing (``SIZING=none``): the anchors' schedule, every 500 of 2,000 steps.
DEFAULT_STEPS = (500, 1000, 1500, 2000)


def steps_of(sizing: str) -> list[int]:
    """The steps whose checkpoints the learning curve scores: the chosen rung's (:func:`curve_steps`) of the
    sizing file ``sizing``, or :data:`DEFAULT_STEPS` for ``"none"``. One place for ``curves.sh`` (which
    scores them) and ``study.sh`` (whose runs keep them committed), so the two cannot disagree."""
    return list(DEFAULT_STEPS) if sizing == "none" else curve_steps(read_sizing(Path(sizing))["chosen"])


def read_sizing(path: Path) -> dict[str, Any]:
    """The sizing file ``path`` (written by this script's main form); a missing one is named, with the cure."""
    if not path.is_file():
        raise SystemExit(f"sizing.py: {path} is not written: run sizing.py first (PLAN.md), or SIZING=none")
    return json.loads(path.read_text(encoding="utf-8"))


def rung_line(sizing: dict[str, Any]) -> str:
    """The chosen rung's evaluation as ``curves.sh`` reads it: its meta-val tasks and its curve units' seeds
    (10 episodes each): ``"blimp.a,blimp.b 1"``."""
    rung = sizing["chosen"]
    return f"{','.join(sizing['meta_val_tasks'])} {rung['curve_units'] // 10}"


def main() -> None:
    import sys

    import yaml

    if sys.argv[1:2] == ["steps"]:  # sizing.py steps benchmarks/results/claim_sizing.json (or none)
        ap = argparse.ArgumentParser(description="the learning curve's steps: the chosen rung's, or 500-2000 (none)")
        ap.add_argument("sizing")
        print(" ".join(map(str, steps_of(ap.parse_args(sys.argv[2:]).sizing))))
        return
    if sys.argv[1:2] == ["rung"]:  # sizing.py rung benchmarks/results/claim_sizing.json
        ap = argparse.ArgumentParser(description="the chosen rung's meta-val tasks and seeds")
        ap.add_argument("sizing", type=Path)
        print(rung_line(read_sizing(ap.parse_args(sys.argv[2:]).sizing)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("costs", type=Path)
    ap.add_argument("--split", default="bench_pool")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--json", type=Path, help="write the table and the choice here")
    args = ap.parse_args()
    from metalm.data.registry import TaskRegistry

    split = yaml.safe_load((ROOT / "tasks" / "splits" / f"{args.split}.yaml").read_text(encoding="utf-8"))
    registry = TaskRegistry.from_dirs(ROOT / "tasks")
    family = {t: (k[-1] if ":" in (k := registry[t].spec.keywords)[-1] else registry[t].spec.source.name)
              for t in split["meta_val"]}  # scripts/make_pool_tasks.py's family: BLiMP's field
    test = len(split["meta_test"])
    chosen, table = choose(json.loads(args.costs.read_text(encoding="utf-8")), args.candidates.split(","), test)
    print(f"{len(split['meta_val'])} meta-val and {test} held-out tasks; budget {BUDGET_HOURS:g} CPU-hours")
    print("| steps | curve points | curve units | meta-val tasks | training | pilot | curves | pool curve | "
          "comparison | total |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in table:
        r = row["rung"]
        print(f"| {r['steps']} | {r['points']} | {r['curve_units']} | {r['val_tasks']} | " + " | ".join(
            f"{row[k]:.1f}" for k in ("training", "pilot", "curves", "pool_curve", "comparison", "total")) + " |")
    study = chosen or RUNGS[-1]  # PLAN.md: if no rung fits, the last, its overrun reported as missed
    subset = val_subset(split["meta_val"], family, study.val_tasks)
    total = table[RUNGS.index(study)]["total"]
    print("the study's rung:", study._asdict(), "within the budget" if chosen else
          f"NONE fits: the last, {total:.1f} CPU-hours, over the budget (reported as missed)",
          "meta-val tasks:", subset)
    if args.json:
        args.json.write_text(json.dumps({"budget_hours": BUDGET_HOURS, "test_tasks": test, "chosen": study._asdict(),
                                         "within_budget": chosen is not None, "total_hours": total,
                                         "meta_val_tasks": subset, "table": table}, indent=1) + "\n",
                             encoding="utf-8")


if __name__ == "__main__":
    main()
