"""bf16 autocast evaluation against the float32 baseline table, on the very same episodes.

Re-measures blocks of the baseline journal (``bench_baselines.json.partial.jsonl``, first seed) under
``autocast: bf16`` (:class:`metalm.eval.EvalConfig`) with fine-tuning's journaled budget, and reports
per row and shot count the paired difference bf16 - float32 over the episodes (95% t-interval) and
the share of episodes scored alike. In the same process it times what each row costs a new task in
each precision (the block's first episode, each row alone, the precisions interleaved), whose
float32 accuracy must equal the table's (the same episodes and budget, checked per block).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fewshot/eval_bf16.py \
        --tasks unit_conversion.different_systems,bbq_lite_json.disability_status_ambig \
        --json benchmarks/results/eval_bf16.json

Each (task, shots) measured is journaled in ``OUT.partial.jsonl`` (the same command resumes); the
report covers every block journaled so far.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from metalm.data import TaskRegistry
from metalm.data.registry import packaged_tasks_dir
from metalm.eval import EvalConfig, Harness
from metalm.eval.journal import Journal
from metalm.eval.protocol import load_protocol
from metalm.eval.recipe import build_setting, journaled_values
from metalm.eval.rows import FinetuneChoice
from metalm.eval.stats import paired
from metalm.runtime.files import json_lines, write_atomic

ROOT = Path(__file__).resolve().parents[2]
PRECISIONS = ("float32", "bf16")


def harnesses(reference: Journal, protocol: str) -> tuple[TaskRegistry, dict[str, Harness], FinetuneChoice]:
    """One harness per precision on the same model and episodes, and fine-tuning's journaled budget."""
    registry = TaskRegistry.from_dirs(packaged_tasks_dir())
    values = dict(load_protocol(protocol, registry).eval)
    if journaled_values(EvalConfig(**values)) != reference.fingerprint["eval"]:
        sys.exit(f"the reference journal was not measured with the {protocol!r} protocol's values")
    setting = build_setting([], reference.fingerprint["model"], torch.device("cpu"), [], [])
    layer = setting.learner.selection.lowest_adapted_layer()
    out: dict[str, Harness] = {}
    for p in PRECISIONS:
        config = EvalConfig(**{**values, "seeds": 1, "cost_episodes": 0, "autocast": p})
        cache = out["float32"].episode_cache if out else None
        out[p] = Harness(setting.learner.model, setting.tokenizer, setting.base, config, [], layer, cache)
    return registry, out, FinetuneChoice.from_record(setting.base, reference.finetune)


def measure(h: dict[str, Harness], finetune: FinetuneChoice, task, shots: int) -> dict:  # noqa: ANN001
    """The bf16 block's per-episode accuracies, and each row alone on the first episode in both precisions."""
    rows = h["bf16"].rows(finetune)
    episodes = h["bf16"].episodes(task, shots, 0)
    start = time.perf_counter()
    block = h["bf16"].block(list(rows.values()), episodes)
    seconds = time.perf_counter() - start
    alone: dict[str, dict[str, list[float]]] = {p: {} for p in PRECISIONS}
    for name, row in rows.items():
        for p in PRECISIONS:
            start = time.perf_counter()
            accuracy = h[p].alone(row, episodes[0])
            alone[p][name] = [time.perf_counter() - start, accuracy]
    return {"key": Journal.key(task.name, shots, 0), "rows": block.accuracy, "seconds": round(seconds, 3),
            "alone": alone}


def read_lines(path: Path) -> dict[str, dict]:
    """The journaled blocks by key (a torn last line, from a kill, is dropped)."""
    return {item["key"]: item for item in json_lines(path)} if path.is_file() else {}


def summarize(lines: dict[str, dict], reference: Journal) -> dict:
    """Per shot count and row: paired bf16 - float32 over the episodes, the share alike, seconds alone."""
    out: dict[str, dict] = {}
    by_shots: dict[str, list[dict]] = {}
    for key, item in lines.items():
        by_shots.setdefault(key.split("/")[1], []).append(item)
    for shots, items in sorted(by_shots.items(), key=lambda kv: int(kv[0])):
        rows = {}
        for name in items[0]["rows"]:
            bf16 = [a for it in items for a in it["rows"][name]]
            fp32 = [a for it in items for a in reference.blocks[it["key"]][name]]
            secs = {p: statistics.fmean(it["alone"][p][name][0] for it in items) for p in PRECISIONS}
            alike = sum(a == b for a, b in zip(bf16, fp32, strict=True)) / len(fp32)
            rows[name] = {"float32": statistics.fmean(fp32), "bf16": statistics.fmean(bf16),
                          "paired": paired(bf16, fp32), "alike": alike,
                          "seconds_alone": secs, "speedup_alone": secs["float32"] / secs["bf16"],
                          "float32_alone_equals_table": sum(it["alone"]["float32"][name][1] ==
                                                            reference.blocks[it["key"]][name][0] for it in items)}
        out[shots] = {"blocks": sorted(it["key"] for it in items), "episodes": sum(len(next(iter(it["rows"].values())))
                                                                                  for it in items), "rows": rows}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", default=str(ROOT / "benchmarks/results/bench_baselines.json.partial.jsonl"))
    parser.add_argument("--protocol", default="bench")
    parser.add_argument("--tasks", help="comma-separated (default: every task of the reference's first seed)")
    parser.add_argument("--shots", help="comma-separated (default: the protocol's)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    reference = Journal.read(args.reference)
    registry, h, finetune = harnesses(reference, args.protocol)
    log = Path(args.json + ".partial.jsonl")
    lines = read_lines(log)
    tasks = args.tasks.split(",") if args.tasks else list(reference.fingerprint["tasks"])
    shots = [int(s) for s in args.shots.split(",")] if args.shots else h["bf16"].config.shots
    for name in tasks:
        for k in shots:
            key = Journal.key(name, k, 0)
            if key in lines or key not in reference.blocks:
                continue  # done, or not in the table yet
            item = measure(h, finetune, registry[name], k)
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(item) + "\n")
            lines[key] = item
            print(json.dumps({"key": key, "seconds": item["seconds"]}), flush=True)
    # Every invocation that added to the journal, in order (a resumed or extended run adds its own).
    before = json.loads(Path(args.json).read_text(encoding="utf-8")) if Path(args.json).is_file() else {}
    commands = before.get("commands") or ([before["command"]] if "command" in before else [])
    command = "python benchmarks/fewshot/eval_bf16.py " + " ".join(argv or sys.argv[1:])
    report = {"commands": commands + [command] * (command not in commands),
              "reference": str(Path(args.reference).relative_to(ROOT)) if Path(args.reference).is_relative_to(ROOT)
              else args.reference, "finetune": reference.finetune | {"grid": None},
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "by_shots": summarize(lines, reference)}
    write_atomic(Path(args.json), json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
