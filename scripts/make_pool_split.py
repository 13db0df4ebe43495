"""The benchmark's split of the pool, by a rule fixed before any learnability figure was seen.

    python scripts/make_pool_split.py      # reads benchmarks/results/learnability_pool_v2.json, writes
                                           # tasks/splits/bench_pool.yaml and tasks/protocols/bench_pool.yaml
    python scripts/make_pool_split.py benchmarks/results/learnability_pool.json   # another file

The rule (written 2026-12-05, before the first row of ``learnability_pool.json`` existed):

1. A task is **eligible** for evaluation when its learnability row says ``learnable`` and
   ``headroom`` (criterion and headroom rule in the JSON): the model can learn it, and neither
   zero-shot nor plain in-context learning already solves it.
2. Tasks come in **families** (a data set; BLiMP one per linguistic field; TweetEval's affect tasks
   and its stance targets apart: ``scripts/make_pool_tasks.py``'s ``family``) and have a **type**
   (their first keyword: intent, affect, grammaticality, question type, stance, ...). A family is
   held out whole: none of its tasks is meta-trained on.
3. Families are visited in one seeded order (seed 0 over their sorted names). A family with an
   eligible task goes to **meta-test** while meta-test covers fewer than 4 types and the family's type
   is new, then while meta-test holds fewer than 20 eligible tasks; then to **meta-val** while it
   holds fewer than 10; every other family is **meta-train** (all its tasks, eligible or not, and
   BBC News).
4. A held-out or validation family lists at most 8 of its eligible tasks (the first in the seeded
   order of its task names); its other tasks are in no list. A family without an eligible task is
   meta-train.

Which learnability file (2026-12-06, before any row of revision 2 existed): revision 1's fixed 32-step
ceiling (``learnability_pool.json``) projected to about 22 eligible tasks where the constraints need
30, so the rule reads revision 2 (``learnability_pool_v2.json``: the ceiling's budget chosen on a
development part of the training examples, :data:`metalm.eval.learnability.SELECTED`); the rule itself
is unchanged.

The split is only written when the constraints hold (>= 20 held-out tasks of >= 4 types, >= 10
meta-val tasks); otherwise the script says what is missing and writes nothing.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PER_FAMILY, TEST_TASKS, TEST_TYPES, VAL_TASKS = 8, 20, 4, 10
#: The baseline table's protocol on this split (tasks/protocols/bench_pool.yaml), written with the split: a
#: protocol names its split, so it ships only once the split exists (issue 42's deliverable 3).
PROTOCOL = """\
description: >-
  The benchmark on the pinned public pool (tasks/splits/bench_pool.yaml, scripts/make_pool_split.py: at
  least 20 learnable held-out tasks with headroom from at least 4 types, at least 10 such meta-val tasks,
  every family of theirs kept out of meta-train): 3-way episodes (multiple choice: the task's options)
  with 2 queries per class at 1, 4 and 16 shots, 10 episodes per task, shot count and seed, 3 seeds (30
  paired units per task and shot count), in-context rows at SmolLM2's whole window (rows still cut are
  reported), fine-tuning's optimizer, rate and steps chosen on the meta-val tasks (at the first shot
  count) from the method study's grid. What a new task costs each row on its own (seconds and tokens) is
  measured after the accuracies on each task's first episode at each shot count.
split: bench_pool
evaluate_on: meta_test
shots: [1, 4, 16]
episodes: 10
seeds: 3
ways: 3
queries: 2
methods: [zeroshot, icl, icl-cal, icl-channel, finetune]
finetune_lrs: [0.3, 1.0, 3.0]
finetune_adam_lrs: [0.003, 0.01]
finetune_steps: [5, 10]
val_episodes: 1
cost_episodes: 1
"""


def choose_split(eligible: Mapping[str, bool], family: Mapping[str, str], kind: Mapping[str, str],
                 seed: int = 0) -> dict[str, list[str]]:
    """The rule of the module doc: ``eligible`` (measured tasks), ``family`` and ``kind`` (type) of every
    task of the pool. Returns ``meta_train``, ``meta_val``, ``meta_test`` (sorted) and ``unlisted``."""
    families: dict[str, list[str]] = {}
    for task in sorted(family):
        families.setdefault(family[task], []).append(task)
    order = sorted(families)
    random.Random(seed).shuffle(order)
    lists: dict[str, list[str]] = {"meta_train": [], "meta_val": [], "meta_test": [], "unlisted": []}

    def pick(name: str) -> list[str]:
        good = [t for t in families[name] if eligible.get(t)]
        random.Random(f"{seed}/{name}").shuffle(good)
        return good[:PER_FAMILY]

    held: set[str] = set()
    for first_pass in (True, False):  # types first, then size
        for name in order:
            good = pick(name)
            if name in held or not good:
                continue
            types = {kind[t] for t in lists["meta_test"]}
            if (first_pass and len(types) < TEST_TYPES and kind[good[0]] not in types) or \
                    (not first_pass and len(lists["meta_test"]) < TEST_TASKS):
                lists["meta_test"] += good
                held.add(name)
    for name in order:
        good = pick(name)
        if name not in held and good and len(lists["meta_val"]) < VAL_TASKS:
            lists["meta_val"] += good
            held.add(name)
    for name in order:
        if name not in held:
            lists["meta_train"] += families[name]
        else:
            lists["unlisted"] += [t for t in families[name] if t not in pick(name)]
    return {k: sorted(v) for k, v in lists.items()}


def problems(split: Mapping[str, list[str]], kind: Mapping[str, str]) -> list[str]:
    """What the split lacks against the issue's constraints (empty when it meets them)."""
    out = []
    if len(split["meta_test"]) < TEST_TASKS:
        out.append(f"meta_test has {len(split['meta_test'])} eligible tasks, fewer than {TEST_TASKS}")
    if len({kind[t] for t in split["meta_test"]}) < TEST_TYPES:
        out.append(f"meta_test covers {len({kind[t] for t in split['meta_test']})} types, fewer than {TEST_TYPES}")
    if len(split["meta_val"]) < VAL_TASKS:
        out.append(f"meta_val has {len(split['meta_val'])} eligible tasks, fewer than {VAL_TASKS}")
    return out


def main(learnability: Path = ROOT / "benchmarks" / "results" / "learnability_pool_v2.json",
         out: Path = ROOT / "tasks" / "splits" / "bench_pool.yaml", protocol: Path | None = None) -> int:
    """Write the rule's split to ``out`` (and :data:`PROTOCOL` to ``protocol`` when given); 1 when the rule
    cannot run yet or its split misses the constraints (nothing written)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_pool_tasks import family as family_of

    from metalm.data import TaskRegistry

    registry = TaskRegistry.from_dirs(ROOT / "tasks" / "pool")
    specs = {t.name: {"keywords": t.spec.keywords, "source": {"name": t.spec.source.name}} for t in registry}
    rows = json.loads(learnability.read_text(encoding="utf-8"))["tasks"]
    unmeasured = sorted(t for t in specs if registry[t].spec.type != "generation" and t not in rows)
    if unmeasured:
        print(f"{len(unmeasured)} candidate tasks are not measured yet (first: {unmeasured[0]}); the rule needs "
              "them all: nothing written", file=sys.stderr)
        return 1
    eligible = {t: bool(r.get("learnable") and r.get("headroom")) for t, r in rows.items()}
    split = choose_split(eligible, {t: family_of(s) for t, s in specs.items()},
                         {t: s["keywords"][0] for t, s in specs.items()})
    missing = problems(split, {t: s["keywords"][0] for t, s in specs.items()})
    if missing:
        print("the rule's split does not meet the constraints: " + "; ".join(missing) + "; nothing written",
              file=sys.stderr)
        return 1
    body = {"name": "bench_pool", "description": "The benchmark's split of the pool (scripts/make_pool_split.py)",
            "meta_train": [*split["meta_train"], "bbc_news"], "meta_val": split["meta_val"],
            "meta_test": split["meta_test"]}
    out.write_text("# Generated by scripts/make_pool_split.py (rule and seed 0 in its docstring) from "
                   f"{learnability.relative_to(ROOT)}.\n" + yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    print(f"{out}: " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
    if protocol is not None:
        protocol.write_text(PROTOCOL, encoding="utf-8")
        print(f"{protocol}: the baseline table's protocol (benchmarks/fewshot/bench_baselines.sh, PROTOCOL=bench_pool)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*(Path(a).resolve() for a in sys.argv[1:2]),
                          protocol=ROOT / "tasks" / "protocols" / "bench_pool.yaml"))
