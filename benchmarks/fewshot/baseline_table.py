"""The baseline table of a benchmark report, as RESULTS shows it: macro, per type, per task, the paired
differences from the best baseline with the detectable difference, cut prompts, costs and wall time.

Reads the report that ``benchmarks/fewshot/bench_baselines.sh`` writes (``metalm eval --json``); a task's
type is the first keyword of its spec (the split rule's type, ``scripts/make_pool_split.py``). Prints
markdown; ``--json`` also writes the per-type rows and the detectable difference per shot count.

    python benchmarks/fewshot/baseline_table.py benchmarks/results/bench_pool_baselines.json \\
        --json benchmarks/results/bench_pool_table.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MDE_TARGET = 0.05  # the benchmark issue's bound on the detectable difference at each shot count


def task_types(tasks: list[str]) -> dict[str, str]:
    """Each task's type: the first keyword of its spec in the task registry (shipped and
    ``$METALM_TASK_PATH`` tasks)."""
    from metalm.data import default_registry

    registry = default_registry()
    return {t: (registry[t].spec.keywords or ["(no keyword)"])[0] for t in tasks}


def detectable(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per shot count: the largest detectable difference (80% power, paired, macro units) of any
    baseline against the reference, and whether it is within :data:`MDE_TARGET`."""
    out = []
    for shots in sorted({p["shots"] for p in report["paired"]}):
        pairs = [p for p in report["paired"] if p["task"] == "macro" and p["shots"] == shots]
        worst = max(pairs, key=lambda p: p["mde80"] if math.isfinite(p["mde80"]) else math.inf)
        out.append({"shots": shots, "reference": worst["reference"], "largest_mde80": worst["mde80"],
                    "against": worst["method"], "units": worst["n"], "within_target": worst["mde80"] <= MDE_TARGET})
    return out


def per_task_table(report: dict[str, Any], types: dict[str, str]) -> str:
    """One line per task and shot count, one column per row (mean over all episodes of all seeds)."""
    acc = {(r["method"], r["task"], r["shots"]): r["accuracy"] for r in report["results"]}
    rows = list(dict.fromkeys(r["method"] for r in report["results"]))
    shots = sorted({r["shots"] for r in report["results"]})
    lines = ["| task | type | shots | " + " | ".join(rows) + " | chance |",
             "|---|---|---|" + "---|" * (len(rows) + 1)]
    for task in report["tasks"]:
        for k in shots:
            best = max(rows, key=lambda r: acc[(r, task, k)])
            cells = [f"**{acc[(r, task, k)]:.3f}**" if r == best else f"{acc[(r, task, k)]:.3f}" for r in rows]
            chance = report["chance"][task]
            lines.append(f"| {task} | {types[task]} | {k} | " + " | ".join(cells) + f" | {chance:.3f} |")
    return "\n".join(lines)


def cut_prompts(report: dict[str, Any]) -> str:
    """One line: the prompts cut to the context per row (``truncated``), or that none was."""
    cut = {row: sum(v["cut"] for v in by_task.values()) for row, by_task in report.get("truncated", {}).items()}
    total = {row: sum(v["rows"] for v in by_task.values()) for row, by_task in report.get("truncated", {}).items()}
    if not any(cut.values()):
        return f"No prompt was cut (context {report.get('max_length')} positions; every row of every task checked)."
    return "Prompts cut to the context: " + ", ".join(f"{r} {cut[r]} of {total[r]}" for r in cut if cut[r]) + "."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--json", type=Path, help="write the per-type rows and detectable differences here")
    args = parser.parse_args(argv)
    from metalm.eval import format_paired, format_table, format_winner
    from metalm.eval.cost import format_cost_table
    from metalm.eval.summary import format_grouped, grouped
    from metalm.runtime.files import write_atomic

    report = json.loads(args.report.read_text(encoding="utf-8"))
    types = task_types(report["tasks"])
    by_type = grouped(report, types)
    mde = detectable(report)
    hours = report.get("measuring_seconds", math.nan) / 3600
    counts = {g: sum(1 for t in report["tasks"] if types[t] == g) for g in sorted(set(types.values()))}
    print(f"{len(report['tasks'])} held-out tasks ({', '.join(f'{g} {n}' for g, n in counts.items())}); "
          f"measuring time {hours:.2f} hours (`measuring_seconds`, every session's time summed); "
          f"fine-tuning: {report.get('budgets', {}).get('finetune', '-')}. {cut_prompts(report)}\n")
    if "finetune" in report:  # the chosen budget against the runner-up on meta-val, when recorded
        from metalm.eval.rows import FinetuneChoice
        noise = FinetuneChoice(None, report["finetune"]["grid"], report["finetune"].get("versus")).warning()
        if noise:
            noise = noise.removeprefix("metalm eval: warning: ")
            print(noise[0].upper() + noise[1:] + "\n")
    print("Macro accuracy (mean over units: one seed's episode, averaged over tasks; 95% t-interval):\n")
    print(format_table(report) + "\n")
    print(format_winner(report) + "\n")
    print("Paired differences from the best baseline on the same units:\n")
    print(format_paired(report) + "\n")
    print("Detectable difference (80% power, 5% two-sided, paired) at each shot count, the largest over the "
          f"rows against the reference; target <= {MDE_TARGET}:\n")
    print("| shots | reference | largest detectable difference (row) | units | within target |\n|---|---|---|---|---|")
    for m in mde:
        print(f"| {m['shots']} | {m['reference']} | {m['largest_mde80']:.3f} ({m['against']}) | {m['units']} | "
              f"{'yes' if m['within_target'] else '**no**'} |")
    print("\nPer type (units averaged over the type's tasks):\n")
    print(format_grouped(by_type) + "\n")
    costs = format_cost_table(report) if report.get("episode_cost") else ""
    if costs:
        print("What a new task costs each row alone (first episode of each task):\n\n" + costs + "\n")
    print("<details><summary>Per task (mean over every episode of every seed; the best row in bold)</summary>\n")
    print(per_task_table(report, types) + "\n\n</details>")
    if args.json:
        write_atomic(args.json, json.dumps({"report": str(args.report), "types": types, "per_type": by_type,
                                            "detectable": mde, "measuring_hours": hours}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
