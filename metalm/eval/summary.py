"""From per-episode accuracies to the report: means, intervals, paired differences, seeds.

* ``results``: per method, task and shot count, the mean over every episode of every seed with its
  95% t-interval;
* ``macro``: per method and shot count, over *units* (one per seed and episode index, each the mean
  over tasks of that episode's accuracy), the mean and its 95% t-interval;
* ``paired``: every method against a reference on the same units (macro) and the same episodes
  (per task): the mean difference, its 95% paired t-interval, the paired t-test's p-value and the
  minimum difference detectable with 80% power (:func:`metalm.eval.stats.paired`);
* ``winner``: per shot count, the method with the best macro mean and its paired difference from
  the runner-up on the same units (``separated``: the interval excludes zero);
* ``seeds``: each seed's macro accuracy per method, and per method the mean and the worst seed;
* ``chance`` and ``majority``: per task, the accuracy of a uniform guess and of always answering
  the query set's most frequent label (generation: its most frequent reference);
* ``per_episode``: every accuracy, keyed ``method|task|shots``, one list per seed (for reanalysis).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..data.episode import TextEpisode
from ..errors import ConfigError, MetalmError
from .scoring import normalize_answer
from .stats import mean_ci95, paired

# Per-episode accuracies: (row, task, shots) -> one list per seed, one value per episode.
Measurements = dict[tuple[str, str, int], list[list[float]]]


def query_baselines(episodes: Mapping[str, Sequence[TextEpisode]]) -> tuple[dict[str, float], dict[str, float]]:
    """Chance and majority-label accuracy per task, over that task's evaluation episodes."""
    chance, majority = {}, {}
    for task, eps in episodes.items():
        q = eps[0].query
        chance[task] = (sum(1 / len(x.options) for x in q) / len(q)) if q[0].options else 0.0
        rates = []
        for ep in eps:
            keys = [x.label if x.options else normalize_answer(x.references[0] if x.references else x.answer)
                    for x in ep.query]
            rates.append(Counter(keys).most_common(1)[0][1] / len(keys))
        majority[task] = sum(rates) / len(rates)
    return chance, majority


def _units(data: Measurements, row: str, tasks: Sequence[str], shots: int) -> list[float]:
    """Macro units of ``row``: per seed and episode index, the mean over tasks."""
    first = data[(row, tasks[0], shots)]
    return [sum(data[(row, t, shots)][s][e] for t in tasks) / len(tasks)
            for s in range(len(first)) for e in range(len(first[s]))]


def summarize(data: Measurements, tasks: Sequence[str], shot_counts: Sequence[int], *,
              chance: Mapping[str, float], majority: Mapping[str, float], seeds: Sequence[int],
              baselines: Sequence[str], reference: str | None = None) -> dict[str, Any]:
    """The JSON-ready report of per-episode accuracies (see the module doc).

    Args:
        data: Per-episode accuracies (:meth:`metalm.eval.Harness.measure`).
        tasks: Task names (the macro mean is over them).
        shot_counts: Shot counts measured.
        seeds: The seed of each set of episodes.
        baselines: Rows that may be the default reference (the best of them by macro mean).
        reference: The reference row instead.

    Raises:
        ConfigError: If ``reference`` names a method that was not evaluated.
    """
    rows = list(dict.fromkeys(r for r, _, _ in data))
    results, macro, pairs, per_seed, seed_summary, winners = [], [], [], [], [], []
    for (row, task, shots), by_seed in data.items():
        flat = [a for accs in by_seed for a in accs]
        mean, ci = mean_ci95(flat)
        results.append({"method": row, "task": task, "shots": shots, "accuracy": mean, "ci95": ci,
                        "episodes": len(flat)})
    references: dict[str, str] = {}
    if reference is not None and reference not in rows:
        raise ConfigError("--reference", f"{reference!r} was not evaluated (evaluated: {', '.join(rows)})")
    for shots in shot_counts:
        units = {row: _units(data, row, tasks, shots) for row in rows}
        for row in rows:
            mean, ci = mean_ci95(units[row])
            macro.append({"method": row, "shots": shots, "accuracy": mean, "ci95": ci})
            values = [sum(data[(row, t, shots)][s][e] for t in tasks for e in range(len(data[(row, t, shots)][s])))
                      / sum(len(data[(row, t, shots)][s]) for t in tasks) for s in range(len(seeds))]
            per_seed += [{"seed": seed, "method": row, "shots": shots, "accuracy": v}
                         for seed, v in zip(seeds, values, strict=True)]
            seed_summary.append({"method": row, "shots": shots, "mean": sum(values) / len(values),
                                 "worst": min(values), "best": max(values)})
        ranked = sorted(rows, key=lambda r: -sum(units[r]) / len(units[r]))
        if len(ranked) > 1:
            best = paired(units[ranked[0]], units[ranked[1]])
            winners.append({"method": ranked[0], "runner_up": ranked[1], "shots": shots,
                            "accuracy": sum(units[ranked[0]]) / len(units[ranked[0]]), **best,
                            "separated": bool(best["diff"] - best["ci95"] > 0)})
        candidates = [r for r in rows if r in baselines]
        ref = reference or (max(candidates, key=lambda r: sum(units[r]) / len(units[r])) if candidates else None)
        if ref is None:
            continue
        references[str(shots)] = ref
        for row in rows:
            if row == ref:
                continue
            pairs.append({"method": row, "reference": ref, "shots": shots, "task": "macro",
                          **paired(units[row], units[ref])})
            for t in tasks:
                mine = [a for accs in data[(row, t, shots)] for a in accs]
                theirs = [a for accs in data[(ref, t, shots)] for a in accs]
                pairs.append({"method": row, "reference": ref, "shots": shots, "task": t, **paired(mine, theirs)})
    per_episode = {f"{row}|{task}|{shots}": by_seed for (row, task, shots), by_seed in data.items()}
    return {"results": results, "macro": macro, "paired": pairs, "reference": references, "winner": winners,
            "per_episode": per_episode,
            "seeds": {"seeds": list(seeds), "per_seed": per_seed, "summary": seed_summary},
            "chance": dict(chance), "macro_chance": sum(chance.values()) / len(chance),
            "majority": dict(majority), "macro_majority": sum(majority.values()) / len(majority)}


def format_table(report: Mapping[str, Any]) -> str:
    """A markdown table: macro accuracy ± 95% CI per method and shot count (with the worst seed when
    there are several), the adaptation budget, chance and the majority label."""
    shots = sorted({r["shots"] for r in report["macro"]})
    summary = {(r["method"], r["shots"]): r for r in report.get("seeds", {}).get("summary", [])}
    several = len(report.get("seeds", {}).get("seeds", [])) > 1
    budgets = report.get("budgets", {})
    lines = ["| method | " + " | ".join(f"{k}-shot" for k in shots) + " | adaptation |",
             "|---|" + "---|" * (len(shots) + 1)]
    for method in dict.fromkeys(r["method"] for r in report["macro"]):
        cells = []
        for k in shots:
            r = next(r for r in report["macro"] if r["method"] == method and r["shots"] == k)
            worst = f" (worst seed {summary[(method, k)]['worst']:.3f})" if several and (method, k) in summary else ""
            cells.append(f"{r['accuracy']:.3f} ± {r['ci95']:.3f}{worst}")
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {budgets.get(method, '-')} |")
    lines.append("| chance | " + " | ".join(f"{report['macro_chance']:.3f}" for _ in shots) + " | - |")
    if "macro_majority" in report:
        lines.append("| majority label | " + " | ".join(f"{report['macro_majority']:.3f}" for _ in shots) + " | - |")
    return "\n".join(lines)


def format_paired(report: Mapping[str, Any]) -> str:
    """A markdown table of the macro paired differences against the reference."""
    rows = [p for p in report.get("paired", []) if p["task"] == "macro"]
    if not rows:
        return ""
    lines = ["| method | reference | shots | difference | paired 95% CI | p | detectable (80% power) |",
             "|---|---|---|---|---|---|---|"]
    for p in rows:
        lo, hi = p["diff"] - p["ci95"], p["diff"] + p["ci95"]
        lines.append(f"| {p['method']} | {p['reference']} | {p['shots']} | {p['diff']:+.3f} | "
                     f"[{lo:+.3f}, {hi:+.3f}] | {p['p']:.3g} | {p['mde80']:.3f} |")
    return "\n".join(lines)


def format_winner(report: Mapping[str, Any]) -> str:
    """One line per shot count: the best method by macro mean and its paired difference from the
    runner-up, with whether the 95% interval excludes zero."""
    lines = []
    for w in report.get("winner", []):
        lo, hi = w["diff"] - w["ci95"], w["diff"] + w["ci95"]
        verdict = "separated" if w["separated"] else "not separated (the interval includes 0)"
        lines.append(f"{w['shots']}-shot winner: {w['method']} ({w['accuracy']:.3f}); vs {w['runner_up']}: "
                     f"{w['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}], p {w['p']:.3g}: {verdict}")
    return "\n".join(lines)


def measurements(report: Mapping[str, Any]) -> Measurements:
    """A report's ``per_episode`` (keys ``method|task|shots``) read back as :data:`Measurements` (keys
    ``(method, task, shots)``, one list per seed): what :func:`summarize` was given."""
    out: Measurements = {}
    for key, by_seed in report["per_episode"].items():
        row, task, shots = key.rsplit("|", 2)
        out[(row, task, int(shots))] = by_seed
    return out


def macro_units(report: Mapping[str, Any], row: str, shots: int) -> list[float]:
    """A report's macro units of ``row`` at ``shots`` (per seed and episode index, the mean over its tasks):
    what its ``paired`` differences are computed on, e.g. to pair two reports scored on the same episodes.

    Raises:
        MetalmError: When the report has no such row (naming the rows it has at ``shots``).
    """
    data = measurements(report)
    missing = [t for t in report["tasks"] if (row, t, shots) not in data]
    if missing:
        have = sorted({r for r, _, n in data if n == shots})
        raise MetalmError(f"the report has no {row!r} row at {shots} shots on {missing[0]} "
                          f"(its rows there: {', '.join(have) or 'none'})")
    return _units(data, row, report["tasks"], shots)


def grouped(report: Mapping[str, Any], groups: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per group of tasks (e.g. a task type), method and shot count: the mean and 95% t-interval over
    units, each unit the mean over the group's tasks of one seed's episode (the macro units of
    ``summarize`` restricted to the group), from the report's ``per_episode``.

    Args:
        report: A report of :func:`summarize` (``per_episode``, ``tasks``, ``macro``).
        groups: Task name -> group name, for every task of the report.

    Returns:
        Rows ``{"group", "method", "shots", "tasks", "accuracy", "ci95"}``, groups sorted by name.

    Raises:
        ConfigError: If a task of the report has no group.
    """
    tasks = list(report["tasks"])
    missing = [t for t in tasks if t not in groups]
    if missing:
        raise ConfigError("groups", f"no group for {len(missing)} task(s) of the report (first: {missing[0]})")
    data = measurements(report)
    out = []
    for group in sorted(set(groups[t] for t in tasks)):
        members = [t for t in tasks if groups[t] == group]
        for r in report["macro"]:
            mean, ci = mean_ci95(_units(data, r["method"], members, r["shots"]))
            out.append({"group": group, "method": r["method"], "shots": r["shots"], "tasks": len(members),
                        "accuracy": mean, "ci95": ci})
    return out


def format_grouped(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of :func:`grouped`: one line per group and method, one column per shot count."""
    shots = sorted({r["shots"] for r in rows})
    cell = {(r["group"], r["method"], r["shots"]): r for r in rows}
    lines = ["| type (tasks) | method | " + " | ".join(f"{k}-shot" for k in shots) + " |",
             "|---|---|" + "---|" * len(shots)]
    for group, method in dict.fromkeys((r["group"], r["method"]) for r in rows):
        n = cell[(group, method, shots[0])]["tasks"]
        cells = [f"{c['accuracy']:.3f} ± {c['ci95']:.3f}" for c in (cell[(group, method, k)] for k in shots)]
        lines.append(f"| {group} ({n}) | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
