"""Write tasks/splits/bench.yaml: the benchmark's split, by a rule over the measured learnability.

Usage: python scripts/make_split.py [--learnability benchmarks/results/learnability.json] [--out ...]

The rule, fixed before any method is compared on the split:

1. Read the tasks in the seeded order of ``learnability_order.txt`` (classification and multiple
   choice tasks that support 16 shots with short inputs first), one at a time, and stop at the
   first prefix whose tasks fill both sets (rules 2-3) or at the first task not yet measured: the
   split is that of the shortest complete prefix, so measuring more tasks later does not change it.
2. A task's *family* is its name before the first dot (BIG-bench's subtasks: ``arithmetic.*``,
   ``multiemo.*``). Families are taken in the order of their first learnable task; a family gives the
   evaluation sets its first ``PER_FAMILY`` learnable tasks (so no family dominates the macro), and
   all its tasks, learnable or not, measured or not, leave meta-train: no held-out task has a sibling
   in training.
3. A family's type is its first task's (classification or multiple choice). Held-out holds
   ``HELDOUT`` tasks, at least ``HELDOUT_CLS`` of them classification; meta-val ``VAL``, at least
   ``VAL_CLS``. A classification family goes to the first set (held-out, then meta-val) still short of
   its classification quota, else to the first with room; a multiple-choice family to the first with
   room beside the places its classification quota still needs; a family gives as many of its tasks
   as fit. A family for which neither set has room is skipped (and stays in meta-train).
4. Meta-train: every other task of the pool (classification, multiple choice and generation files
   under ``tasks/bigbench``), the families of both evaluation sets excluded.

The file names the rule, the learnability file's criterion and the number of tasks read. It fails,
saying what is missing, while the measured prefix cannot fill both sets.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PER_FAMILY, HELDOUT, HELDOUT_CLS, VAL, VAL_CLS = 3, 20, 4, 10, 2


def family(name: str) -> str:
    return name.split(".", 1)[0]


def _assign(prefix: Sequence[str], measured: Mapping[str, Mapping],
            types: Mapping[str, str]) -> tuple[dict[str, list[str]], list[str]]:
    """Rules 2-3 over the tasks of ``prefix``: the evaluation sets, and what each still lacks."""
    families: dict[str, list[str]] = {}
    for name in prefix:
        if measured[name].get("learnable"):
            families.setdefault(family(name), []).append(name)
    sets: dict[str, list[str]] = {"meta_test": [], "meta_val": []}
    quota = {"meta_test": (HELDOUT, HELDOUT_CLS), "meta_val": (VAL, VAL_CLS)}

    def count_cls(where: str) -> int:
        return sum(types[t] == "classification" for t in sets[where])

    def room(where: str, cls: bool) -> int:
        """Places left for a family of this type, keeping those the classification quota still needs."""
        size, need_cls = quota[where]
        return size - len(sets[where]) - (0 if cls else max(0, need_cls - count_cls(where)))

    for members in families.values():
        cls = types[members[0]] == "classification"
        lacking = [w for w in quota if cls and count_cls(w) < quota[w][1]]  # sets short of classification
        where = next((w for w in [*lacking, *quota] if room(w, cls) >= 1), None)
        if where is not None:  # its first tasks, as many as fit (at most PER_FAMILY)
            sets[where] += members[:min(PER_FAMILY, room(where, cls))]
    missing = [f"{where}: {len(sets[where])} of {size} tasks, {count_cls(where)} of {need} classification"
               for where, (size, need) in quota.items() if len(sets[where]) < size or count_cls(where) < need]
    return sets, missing


def make_split(order: Sequence[str], measured: Mapping[str, Mapping], types: Mapping[str, str],
               pool: Sequence[str]) -> dict:
    """The split of the rule above: ``{"meta_train", "meta_val", "meta_test", "read"}``.

    Args:
        order: The seeded order of the learnability job.
        measured: Task name -> its learnability entry (``learnable``).
        types: Task name -> ``classification`` / ``multiple_choice`` / ``generation``.
        pool: Every task of the pool (meta-train is drawn from it).

    Raises:
        ValueError: If the measured prefix cannot fill both evaluation sets.
    """
    prefix: list[str] = []
    sets, missing = _assign(prefix, measured, types)
    for name in order:
        if name not in measured:
            break
        prefix.append(name)
        sets, missing = _assign(prefix, measured, types)
        if not missing:  # the shortest complete prefix: later measurements do not change the split
            break
    if missing:
        raise ValueError(f"the {len(prefix)} tasks measured in order cannot fill the split yet "
                         f"({'; '.join(missing)}): let the learnability job measure more")
    taken = {family(t) for t in sets["meta_test"] + sets["meta_val"]}
    return {"meta_train": [t for t in pool if family(t) not in taken], "meta_val": sets["meta_val"],
            "meta_test": sets["meta_test"], "read": len(prefix)}


def render(split: dict, criterion: str) -> str:
    header = [
        "# The benchmark split (scripts/make_split.py; the rule is in its docstring): held-out and meta-val",
        f"# tasks are learnable (benchmarks/results/learnability.json, criterion: {criterion}), at most",
        f"# {PER_FAMILY} per BIG-bench family, every family of theirs kept out of meta-train; {split['read']} tasks of",
        "# the seeded order (benchmarks/results/learnability_order.txt, seed 0) were read. Regenerate with",
        "# `python scripts/make_split.py`; tests/data/test_make_split.py checks this file is its output.",
    ]
    body = {"name": "bench", "description": "Learnable held-out and meta-val BIG-bench tasks (classification and "
                                            "multiple choice); meta-train is the rest of the pool, their "
                                            "families excluded.",
            "meta_train": split["meta_train"], "meta_val": split["meta_val"], "meta_test": split["meta_test"]}
    return "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False, width=100)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--learnability", default=str(ROOT / "benchmarks/results/learnability.json"))
    ap.add_argument("--out", default=str(ROOT / "tasks/splits/bench.yaml"))
    args = ap.parse_args(argv)
    from metalm.data.registry import TaskRegistry

    registry = TaskRegistry.from_dirs(ROOT / "tasks")
    saved = json.loads(Path(args.learnability).read_text(encoding="utf-8"))
    order = Path(args.learnability).with_name("learnability_order.txt").read_text(encoding="utf-8").split()
    pool = sorted(t.name for t in registry if t.spec.source.kind == "bigbench")
    types = {t.name: t.spec.type for t in registry}
    try:
        split = make_split(order, saved["tasks"], types, pool)
    except ValueError as err:
        print(f"make_split: {err}", file=sys.stderr)
        return 1
    Path(args.out).write_text(render(split, saved["criterion"]), encoding="utf-8")
    print(f"{args.out}: {len(split['meta_train'])} meta-train, {len(split['meta_val'])} meta-val, "
          f"{len(split['meta_test'])} held-out tasks ({split['read']} read)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
