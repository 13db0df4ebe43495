"""Learnability of a pool: each task's ceiling (a task LoRA) against chance, zero-shot and in-context learning.

    OMP_NUM_THREADS=1 nice python benchmarks/fewshot/learnability.py --split pool \
        --out benchmarks/results/learnability_pool.json                          # the pinned pool, resumable
    OMP_NUM_THREADS=1 nice python benchmarks/fewshot/learnability.py            # the BIG-bench pool (a copy)
    python benchmarks/fewshot/learnability.py --tasks navigate,snarks --out /tmp/l.json
    OMP_NUM_THREADS=1 nice python benchmarks/fewshot/learnability.py --split pool --revision 2 \
        --known benchmarks/results/learnability_pool.json --out benchmarks/results/learnability_pool_v2.json

Revision 2 of the criterion (``--revision 2``, :data:`metalm.eval.learnability.SELECTED`) chooses the
ceiling's budget (lr and steps) on a development part of the training examples instead of fixing it;
``--known`` reuses an earlier file's in-context scores of the same examples (checked by zero-shot).

The headroom rule (:data:`metalm.eval.learnability.HEADROOM`) is fixed with the criterion and written
into the output beside it: held-out and meta-val tasks must be learnable and not already solved.

The criterion is fixed before any run (:data:`metalm.eval.learnability.CRITERION`, with the
settings of :class:`~metalm.eval.learnability.CeilingConfig`) and written into the output. Each
finished task is appended to ``OUT.partial.jsonl`` at once, so a killed run resumes where it
stopped; ``OUT`` (``{"criterion", "tasks": {name: {...}}}``) is rewritten after every task.
Order: tasks that support 16 shots (the candidates of held-out and meta-val sets) first, then the
rest, each group in a seeded random order, so a partial file is a random sample of its group (the
order is written once to ``OUT-STEM_order.txt`` beside ``OUT``). With ``--split``, the candidates are
the split's classification and multiple-choice tasks, in one seeded random order.
The model is the study's shape: SmolLM2-135M with LoRA r=8 (alpha 16) on q/v of the top 4 layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from metalm import AdapterConfig, MetaConfig, apply_adapter, load_model, select_parameters
from metalm.data import default_registry, load_split
from metalm.eval.learnability import REVISION_2, CeilingConfig, measure_task
from metalm.hub import resolve_model
from metalm.runtime.environment import versions
from metalm.runtime.files import write_atomic

ROOT = Path(__file__).resolve().parents[2]


def _short(task, chars: int = 600) -> bool:  # noqa: ANN001
    """Whether a task's median input (plus its template) is short enough, about 160 tokens, for a 3-way
    16-shot prompt (48 demonstrations) to fit SmolLM2's 8,192 positions (an estimate at 4 characters
    a token, used only to order the work)."""
    inputs = task.data["input"] if "input" in task.data.column_names else []
    return bool(len(inputs)) and len(task.spec.template) + statistics.median(len(x) for x in inputs) <= chars


def pool(registry, first_shots: int = 16) -> list[str]:  # noqa: ANN001
    """Classification and multiple-choice tasks: those that support ``first_shots`` shots and are short
    (the candidates of held-out and meta-val sets) first, then the rest."""
    names = [n for n in registry.names() if registry[n].spec.type in ("classification", "multiple_choice")]
    big = [n for n in names if (registry[n].spec.max_shots or first_shots) >= first_shots and _short(registry[n])]
    small = [n for n in names if n not in big]
    random.Random(0).shuffle(big)
    random.Random(1).shuffle(small)
    return big + small


def split_candidates(registry, split: str) -> list[str]:  # noqa: ANN001
    """A split's classification and multiple-choice tasks, in one seeded random order."""
    s = load_split(split, registry)
    names = sorted(n for n in s.meta_train + s.meta_val + s.meta_test
                   if registry[n].spec.type in ("classification", "multiple_choice"))
    random.Random(0).shuffle(names)
    return names


def config(revision: int) -> CeilingConfig:
    """The criterion's settings: revision 1 (:data:`~metalm.eval.learnability.CRITERION`) or 2
    (:data:`~metalm.eval.learnability.SELECTED` with :data:`~metalm.eval.learnability.REVISION_2`)."""
    return CeilingConfig() if revision == 1 else CeilingConfig(**REVISION_2)


def read_journals(out: Path, cfg: CeilingConfig | None = None) -> dict[str, dict]:
    """Every task measured so far: ``out`` itself (committed, so a fresh clone resumes too) and the journals
    of all shards (a line cut by a kill is measured again)."""
    done: dict[str, dict] = {}
    if out.is_file():
        saved = json.loads(out.read_text(encoding="utf-8"))
        if saved.get("criterion") != (cfg or CeilingConfig(**saved.get("config", {}))).criterion():
            raise SystemExit(f"{out} was measured by another criterion; move it away to measure anew")
        done.update(saved["tasks"])
    for journal in sorted(out.parent.glob(f"{out.name}.*.partial.jsonl")):
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[row["task"]] = row["result"]
    return done


def table(out: Path) -> str:
    """The status line and the markdown table of RESULTS.md, from ``out`` and the order file."""
    done = read_journals(out)
    order = out.with_name(out.stem + "_order.txt").read_text(encoding="utf-8").split()
    registry = default_registry()
    measured = [n for n in order if n in done and "error" not in done[n]]
    by_type: dict[str, list[int]] = {}
    for n in measured:
        by_type.setdefault(registry[n].spec.type, [0, 0])
        by_type[registry[n].spec.type][0] += bool(done[n]["learnable"])
        by_type[registry[n].spec.type][1] += 1
    seconds = statistics.median(done[n]["seconds"] for n in measured) if measured else 0.0
    roomy = sum(bool(done[n].get("learnable") and done[n].get("headroom")) for n in measured)
    chosen = any("chosen" in done[n] for n in measured)  # revision 2: the budget each ceiling chose
    skipped = [f"{n} ({done[n]['error']})" for n in order if n in done and "error" in done[n]]
    lines = [f"{len(measured)} tasks measured, {sum(bool(done[n]['learnable']) for n in measured)} learnable ("
             + ", ".join(f"{t}: {a} of {b}" for t, (a, b) in sorted(by_type.items()))
             + f"), {roomy} learnable with headroom; median {seconds:.0f} s a task on one thread"
             + (f"; not measured: {'; '.join(skipped)}" if skipped else ""),
             "", "| task | type | chance | zero-shot | ICL | ceiling | 95% CI | n | learnable | headroom |"
             + (" ceiling's lr@steps |" if chosen else ""),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if chosen else "")]
    for n in sorted(measured):
        r = done[n]
        icl = f"{r['icl']:.3f}" if r.get("icl") is not None else "-"
        room = {True: "yes", False: "no"}.get(r.get("headroom"), "-")
        budget = (f" {r['chosen']['lr']:g}@{r['chosen']['steps']} |" if "chosen" in r else " - |") if chosen else ""
        lines.append(f"| {n} | {registry[n].spec.type} | {r['chance']:.3f} | {r['zeroshot']:.3f} | {icl} | "
                     f"{r['ceiling']:.3f} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {r['n']} | "
                     f"{'yes' if r['learnable'] else 'no'} | {room} |{budget}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", action="store_true", help="print the status line and table of RESULTS.md and exit")
    ap.add_argument("--tasks", help="comma-separated task names (default: the whole pool)")
    ap.add_argument("--split", help="the candidates: this split's classification and multiple-choice tasks")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/learnability.json"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, help="stop after this many new tasks")
    ap.add_argument("--shard", default="0/1", help="I/N: measure every N-th task from the I-th (one process each)")
    ap.add_argument("--reverse", action="store_true",
                    help="take the shard's tasks from its last: a second process on a shard that lags (its own "
                         "journal; each skips what the other has measured)")
    ap.add_argument("--revision", type=int, choices=(1, 2), default=1,
                    help="the criterion: 1 (fixed 32-step ceiling) or 2 (budget chosen on a development part)")
    ap.add_argument("--skip", default="", help="comma-separated tasks recorded as skipped (with --why), not "
                                               "measured: they count as not eligible")
    ap.add_argument("--why", default="", help="the reason recorded for --skip (e.g. an estimated cost)")
    ap.add_argument("--known", help="an earlier file of the same examples: its in-context scores are reused "
                                    "where zero-shot is measured again to the digit")
    args = ap.parse_args()
    if args.table:
        print(table(Path(args.out)))
        return 0
    cfg = config(args.revision)
    registry = default_registry()
    order = Path(args.out).with_name(Path(args.out).stem + "_order.txt")
    if args.tasks:
        names = args.tasks.split(",")
    elif order.is_file():  # computed once (it loads every task's data): every shard and resume agree
        names = order.read_text(encoding="utf-8").split()
    else:
        names = pool(registry) if not args.split else split_candidates(registry, args.split)
        write_atomic(order, "\n".join(names) + "\n")
    out = Path(args.out)
    shard, shards = (int(x) for x in args.shard.split("/"))
    journal = out.with_name(f"{out.name}.{shard}{'r' if args.reverse else ''}.partial.jsonl")
    done = read_journals(out, cfg)
    path = resolve_model(args.model)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    adapter = AdapterConfig(kind="lora", rank=8, alpha=16, layers="top:4")
    model = apply_adapter(load_model(path), adapter)
    sel = select_parameters(model, adapter, MetaConfig(shared="none"))
    init = {k: v.detach().clone() for k, v in sel.fast_params(model).items()}
    new = 0
    for name in names[shard::shards][::-1 if args.reverse else 1]:
        if name in done:
            continue
        if args.limit is not None and new >= args.limit:
            break
        if name in args.skip.split(","):
            if not args.why:
                ap.error("--skip needs --why: the reason is recorded in the row")
            result: dict = {"error": f"skipped: {args.why}"}
        start = time.perf_counter()
        known = json.loads(Path(args.known).read_text(encoding="utf-8"))["tasks"] if args.known else {}  # grows
        try:
            if name not in args.skip.split(","):
                result = measure_task(model, init, registry[name], tokenizer, cfg, sel.lowest_adapted_layer(),
                                      known=known.get(name))
        except Exception as err:  # noqa: BLE001 - recorded per task, the run goes on
            result = {"error": f"{type(err).__name__}: {err}"[:300]}
        result["seconds"] = round(time.perf_counter() - start, 1)
        new += 1
        with open(journal, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"task": name, "result": result}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        done = read_journals(out, cfg)  # every shard's tasks so far
        write_atomic(out, json.dumps({"criterion": cfg.criterion(), "headroom": cfg.headroom_rule(),
                                      "config": dataclasses.asdict(cfg), "versions": versions(),
                                      "tasks": {n: done[n] for n in sorted(done)}}, indent=1) + "\n")
        print(f"{name}: {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
