"""Reports and exports of a run folder.

``metalm report DIR`` turns ``log.jsonl`` and ``eval.json`` into ``report/report.md`` with the
results table and PNG plots (meta-training curves; accuracy against shots per method; accuracy
against what a new task costs, with the Pareto front, when the evaluation measured it);
``metalm report FILE.json`` does the same for an evaluation without a run folder.
``metalm export DIR OUT`` writes the meta-learned adapter in PEFT format (loadable with
``PeftModel.from_pretrained``), plus the shared-weight changes and learned inner rates.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .errors import MetalmError
from .models import save_peft
from .runtime.files import json_lines


def _read_log(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "log.jsonl"
    if not path.is_file():
        raise MetalmError(f"{run_dir} has no log.jsonl; run `metalm train --run-dir {run_dir}` first")
    return json_lines(path)


def _cost_by_task(log: list[dict[str, Any]]) -> list[str]:
    """A table of what each task costs: tokens per episode, and the mean time of the steps it was in."""
    tokens: dict[str, list[int]] = {}
    seconds: dict[str, list[float]] = {}
    for row in log:
        for task, n in zip(row.get("tasks", []), row.get("tokens", []), strict=False):
            tokens.setdefault(task, []).append(n)
            seconds.setdefault(task, []).append(row.get("seconds", float("nan")))
    if not tokens:
        return []
    lines = ["## Cost by task", "", "Tokens per episode (support + query rows x padded length) and the mean time of "
             "the outer steps that drew the task (a step's time is shared by its episodes).", "",
             "| task | episodes | tokens per episode | mean step seconds |", "|---|---|---|---|"]
    for task in sorted(tokens, key=lambda t: -sum(tokens[t]) / len(tokens[t])):
        lines.append(f"| {task} | {len(tokens[task])} | {sum(tokens[task]) / len(tokens[task]):.0f} | "
                     f"{sum(seconds[task]) / len(seconds[task]):.2f} |")
    return [*lines, ""]


def _curves(ax, rows: list[dict[str, Any]], x: str) -> None:  # noqa: ANN001 - a matplotlib Axes
    """One accuracy curve (with 95% CI bars) per method against ``x``."""
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r[x])
        ax.errorbar([r[x] for r in mine], [r["accuracy"] for r in mine], [r["ci95"] for r in mine],
                    marker="o", capsize=3, label=method)


def _save_accuracy_plot(fig, ax, chance: float, path: Path) -> None:  # noqa: ANN001 - matplotlib objects
    """Chance line, labels and legend, then write the figure to ``path`` and close it."""
    import matplotlib.pyplot as plt

    ax.axhline(chance, color="grey", linestyle="--", label="chance")
    ax.set_ylabel("macro accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _eval_section(report: dict[str, Any], out: Path) -> list[str]:
    """The report's evaluation part: tables, paired differences, seeds and plots of ``report``."""
    import matplotlib.pyplot as plt

    from .eval.summary import format_paired, format_table, format_winner
    from .runtime.environment import describe

    lines: list[str] = []
    lines += ["## Few-shot accuracy on held-out tasks (macro mean ± 95% CI over episodes)", "",
              format_table(report), "", f"Tasks: {', '.join(report.get('tasks', []))}.", "",
              f"Software: {describe(report.get('versions'))}.", ""]
    paired = format_paired(report)
    if paired:
        lines += ["### Paired differences against the reference (same episodes, paired t)", "", paired, ""]
    if format_winner(report):
        lines += [format_winner(report), ""]
    seeds = report.get("seeds", {})
    if len(seeds.get("seeds", [])) > 1:
        lines += ["### Seeds of example choice (macro accuracy per seed)", "",
                  "| method | shots | " + " | ".join(f"seed {s}" for s in seeds["seeds"]) + " | mean | worst |",
                  "|---|---|" + "---|" * (len(seeds["seeds"]) + 2)]
        for row in seeds["summary"]:
            per = [r["accuracy"] for r in seeds["per_seed"]
                   if r["method"] == row["method"] and r["shots"] == row["shots"]]
            lines.append(f"| {row['method']} | {row['shots']} | " + " | ".join(f"{v:.3f}" for v in per) +
                         f" | {row['mean']:.3f} | {row['worst']:.3f} |")
        lines.append("")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    methods = list(dict.fromkeys(r["method"] for r in report["macro"]))
    shots = sorted({r["shots"] for r in report["macro"]})
    if len(shots) == 1:  # one shot count: a bar per method
        rows = [next(r for r in report["macro"] if r["method"] == m) for m in methods]
        ax.bar(methods, [r["accuracy"] for r in rows], yerr=[r["ci95"] for r in rows], capsize=4,
               color=[f"C{i}" for i in range(len(methods))])
        ax.set_xlabel(f"method ({shots[0]}-shot)")
    else:
        _curves(ax, report["macro"], "shots")
        ax.set_xlabel("shots (K)")
    _save_accuracy_plot(fig, ax, report["macro_chance"], out / "accuracy_vs_shots.png")
    lines += ["![accuracy vs shots](accuracy_vs_shots.png)", ""]
    sweep = report.get("inner_steps_sweep")
    if sweep:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        _curves(ax, sweep, "inner_steps")
        ax.set_xlabel(f"inner steps ({sweep[0]['shots']}-shot)")
        _save_accuracy_plot(fig, ax, report["macro_chance"], out / "accuracy_vs_inner_steps.png")
        lines += ["![accuracy vs inner steps](accuracy_vs_inner_steps.png)", ""]
    lines += _cost_section(report, out)
    lines += ["### Per task", "",
              "| method | task | shots | accuracy | ci95 |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['task']} | {r['shots']} | {r['accuracy']:.3f} | {r['ci95']:.3f} |"
              for r in report["results"]]
    return lines


def _cost_section(report: dict[str, Any], out: Path) -> list[str]:
    """Accuracy against what a new task costs each row alone (``report["episode_cost"]``, measured with
    ``cost_episodes``): a table and ``accuracy_vs_cost.png``, one panel per shot count with its Pareto
    front (no row both cheaper and more accurate) joined. Nothing without costs."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from .eval.cost import cost_table, format_cost_table

    table = cost_table(report)
    if not table:
        return []
    shots = sorted({x["shots"] for x in table})
    color = {row: f"C{i % 10}" for i, row in enumerate(sorted({x["row"] for x in table}))}
    fig, axes = plt.subplots(1, len(shots), figsize=(4.5 * len(shots), 3.8), squeeze=False, sharey=True)
    for ax, k in zip(axes[0], shots, strict=True):
        mine = [x for x in table if x["shots"] == k]
        for x in mine:
            ax.errorbar(x["seconds"], x["accuracy"], x["ci95"], marker="o", capsize=3, color=color[x["row"]],
                        label=x["row"])
        front = [x for x in mine if x["front"]]
        ax.step([x["seconds"] for x in front], [x["accuracy"] for x in front], where="post", color="black",
                linestyle=":", label="Pareto front")
        ax.axhline(report["macro_chance"], color="grey", linestyle="--", label="chance")
        if min(x["seconds"] for x in mine) > 0:
            ax.set_xscale("log")  # ticks at 1, 2 and 5 of each decade, as plain numbers: a span under a
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # decade still shows its scale
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-0.02, 1.02)  # accuracies; an interval of few episodes can reach past them
        ax.set_xlabel("seconds per new task")
        ax.set_title(f"{k}-shot")
    axes[0][0].set_ylabel("macro accuracy")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_cost.png", dpi=110)
    plt.close(fig)
    return ["### What a new task costs (each row alone: support set and queries)", "",
            "Macro means over the first episode(s) of each task (`cost_episodes`); the Pareto front holds the "
            "rows that no other row beats on both seconds and accuracy.", "", format_cost_table(report), "",
            "![accuracy vs cost](accuracy_vs_cost.png)", ""]


def read_eval_report(path: Path) -> dict[str, Any]:
    """``eval.json`` as written by ``metalm eval``, its rows checked (methods, shots, finite accuracies).

    Raises:
        MetalmError: Naming the file and what is wrong with it.
    """
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise MetalmError(f"{path}: not a report of `metalm eval` ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:120]}); rerun the evaluation") from None

    def bad(what: str) -> MetalmError:
        return MetalmError(f"{path}: not a report of `metalm eval`: {what}; rerun the evaluation")

    if not isinstance(report, dict):
        raise bad(f"a {type(report).__name__}, not an object")
    for key in ("macro", "results"):
        rows = report.get(key)
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            raise bad(f"{key!r} is not a non-empty list of rows")
        for r in rows:
            if not isinstance(r.get("method"), str) or isinstance(r.get("shots"), bool) or \
                    not isinstance(r.get("shots"), int) or (key == "results" and not isinstance(r.get("task"), str)):
                raise bad(f"a row of {key!r} lacks its method, shots or task: {str(r)[:80]}")
            for field in ("accuracy", "ci95"):
                if not _finite(r.get(field)):
                    raise bad(f"{key!r} row {r['method']}/{r['shots']}: {field} {r.get(field)!r} is not a finite "
                              "number")
    for key in ("macro_chance", *(["macro_majority"] if "macro_majority" in report else [])):
        if not _finite(report.get(key)):
            raise bad(f"{key!r} is {report.get(key)!r}, not a finite number")
    for key, kind in (("tasks", list), ("seeds", dict), ("budgets", dict), ("paired", list), ("winner", list),
                      ("inner_steps_sweep", list), ("episode_cost", dict)):
        if key in report and not isinstance(report[key], kind):
            raise bad(f"{key!r} is a {type(report[key]).__name__}, not a {kind.__name__}")
    return report


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def write_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.md`` and its plots; returns the markdown path. ``path`` is a run folder (training
    curves and costs, and its ``eval.json`` if any; written to ``DIR/report`` unless ``out``) or the
    JSON of a ``metalm eval`` alone (e.g. a baselines table; written to ``NAME_report`` beside it
    unless ``out``)."""
    import matplotlib

    matplotlib.use("Agg")
    path = Path(path)
    if path.is_file():  # an evaluation without a run folder
        report = read_eval_report(path)  # before anything is written
        folder = Path(out) if out is not None else path.with_name(path.stem + "_report")
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"# metalm evaluation {path.name}", "", *_checked_eval_section(report, path, folder)]
    else:
        log = _read_log(path)  # before anything is written
        folder = Path(out) if out is not None else path / "report"
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"# metalm run {path.name}", "", *_training_section(log, folder)]
        eval_path = path / "eval.json"
        if eval_path.exists() and not eval_path.is_file():
            raise MetalmError(f"{eval_path} is not a file (a report of `metalm eval`)")
        if eval_path.is_file():
            lines += _checked_eval_section(read_eval_report(eval_path), eval_path, folder)
        else:
            lines += ["No `eval.json` yet: run `metalm eval --run-dir " + str(path) + "`."]
        lines += _steps_section(path, folder)
    md = folder / "report.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return md


def _steps_section(run: Path, out: Path) -> list[str]:
    """Accuracy along training: the run's evaluations at its checkpoints (``eval.step-NNNNNNN.json``,
    written by ``metalm eval --step N`` or a checkpoint folder as ``--run-dir``), macro accuracy per
    row and shot count against the step (``accuracy_vs_step.png``). Points evaluated on other tasks
    than most of them are left out, and named."""
    import matplotlib.pyplot as plt

    found = {}
    for file in sorted(run.glob("eval.step-*.json")):
        digits = file.name[len("eval.step-"):-len(".json")]
        if digits.isdigit():
            found[int(digits)] = (file, read_eval_report(file))
    if not found:
        return []
    groups: dict[tuple[str, ...], list[int]] = {}
    for step, (_, report) in found.items():
        groups.setdefault(tuple(report.get("tasks", [])), []).append(step)
    steps = max(groups.values(), key=len)
    left_out = [found[s][0].name for s in sorted(found) if s not in steps]
    points = {(r["method"], r["shots"]): {} for s in steps for r in found[s][1]["macro"]}
    for s in steps:
        for r in found[s][1]["macro"]:
            points[r["method"], r["shots"]][s] = (r["accuracy"], r["ci95"])
    shots = sorted({k for _, k in points})
    fig, axes = plt.subplots(1, len(shots), figsize=(4.5 * len(shots), 3.5), squeeze=False, sharey=True)
    for ax, k in zip(axes[0], shots, strict=True):
        for i, ((method, _), per) in enumerate(sorted((key, v) for key, v in points.items() if key[1] == k)):
            xs = sorted(per)
            ax.errorbar(xs, [per[x][0] for x in xs], [per[x][1] for x in xs], marker="o", capsize=3,
                        color=f"C{i % 10}", label=method)
        ax.set_xlabel("outer step")
        ax.set_title(f"{k}-shot")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("macro accuracy")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_step.png", dpi=110)
    plt.close(fig)
    lines = ["## Accuracy along training (the run's checkpoints evaluated)", "",
             "| row | shots | " + " | ".join(f"step {s}" for s in sorted(steps)) + " |",
             "|---|---|" + "---|" * len(steps)]
    for (method, k), per in sorted(points.items(), key=lambda item: (item[0][1], item[0][0])):
        cells = [f"{per[s][0]:.3f} ± {per[s][1]:.3f}" if s in per else "" for s in sorted(steps)]
        lines.append(f"| {method} | {k} | " + " | ".join(cells) + " |")
    lines += ["", f"Tasks: {', '.join(found[steps[0]][1].get('tasks', []))}."]
    if left_out:
        lines.append(f"Left out (evaluated on other tasks): {', '.join(left_out)}.")
    return [*lines, "", "![accuracy vs step](accuracy_vs_step.png)", ""]


def _training_section(log: list[dict[str, Any]], out: Path) -> list[str]:
    """Meta-training curves (``training.png``), the last step's figures and the cost by task."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, ax in (("query_loss", axes[0]), ("query_accuracy", axes[1])):
        steps = [r["step"] for r in log if key in r]
        ax.plot(steps, [r[key] for r in log if key in r], label=f"train {key}")
        val = [(r["step"], r[f"val_{key}"]) for r in log if f"val_{key}" in r]
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label=f"meta-val {key}")
        ax.set_xlabel("outer step")
        ax.set_title(key.replace("_", " "))
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=110)
    plt.close(fig)
    last = log[-1] if log else {}
    episodes = [t for r in log for t in r.get("tasks", [])]
    tokens = sum(n for r in log for n in r.get("tokens", []))
    seen = (f"Seen in training: {len(episodes):,} episodes of {len(set(episodes))} tasks, {tokens:,} tokens "
            "(support and query rows x their padded length).") if episodes else ""
    return ["## Meta-training", "", f"{len(log)} outer steps; last: " +
            ", ".join(f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float)), "", seen,
            "", "![training curves](training.png)", "", *_cost_by_task(log)]


def _checked_eval_section(report: dict[str, Any], where: Path, out: Path) -> list[str]:
    """:func:`_eval_section`, a malformed report named by its file (``where``)."""
    try:
        return _eval_section(report, out)
    except (KeyError, TypeError, ValueError, IndexError, StopIteration, AttributeError) as err:
        raise MetalmError(f"{where}: not a report of `metalm eval`: {type(err).__name__} {err} while "
                          "writing its tables; rerun the evaluation") from None


def portable_base(model: str, out: Path) -> tuple[str, str]:
    """A reference to the base model that works off this machine, and the local folder it was read from.

    An embedded model gives its hub id (SmolLM2's; the embedded weights are a dequantized GGUF of
    it, so a hub download matches to quantization error, not bit for bit); a local folder gives
    the hub id in its ``config.json`` (``_name_or_path``) when it has one, else its path relative to
    ``out``; a hub id stays as it is.
    """
    from .hub import MODELS, resolve_model

    local = resolve_model(model)
    if model in MODELS:
        return MODELS[model]["hub_id"], local
    folder = Path(local)
    if not folder.is_dir():
        return model, local  # a hub id
    try:
        named = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_name_or_path", "")
    except (OSError, ValueError):
        named = ""
    if named and "/" in named and not Path(named).exists() and not named.startswith((".", "/", "~")):
        return named, str(folder.resolve())
    return os.path.relpath(folder.resolve(), Path(out).resolve()), str(folder.resolve())


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Export a trained run's meta-learned adapter and weights.

    Writes, into ``out``: the LoRA adapter in PEFT format (``adapter_config.json``,
    ``adapter_model.safetensors``) when the adapter is LoRA, else ``fast_weights.safetensors``;
    ``shared_weights.safetensors`` when the outer loop updated base weights (load them into the
    base model before the adapter); ``inner_lrs.safetensors`` for learned inner rates;
    what the algorithm adds (:meth:`MetaLearner.export <metalm.algorithms.MetaLearner.export>`: a
    multi-task run's ``task_params.safetensors``, a HyperLoRA run's ``hypernetwork.safetensors``, a
    LoRA library's ``library/``); and ``metalm.json`` describing the run (``files``: what the
    algorithm added).
    """
    from .run import load_run

    run = load_run(run_dir, torch.device("cpu"))
    config, tokenizer, algorithm = run.config, run.tokenizer, run.load_into_model()  # export the trained values
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, sel = algorithm.model, algorithm.selection
    prefix = "base_model.model."
    base_ref, local = portable_base(config.model, out)
    if config.adapter.kind == "lora":
        save_peft(model, out, base_ref)
    else:
        save_file({n: p.detach().contiguous() for n, p in sel.fast_params(model).items()},
                  str(out / "fast_weights.safetensors"))
    # Under the base model's own names: PEFT renames a wrapped layer's weight to `...q_proj.base_layer.weight`.
    shared = {n.removeprefix(prefix).replace(".base_layer.", "."): p.detach().contiguous()
              for n, p in dict(model.named_parameters()).items() if n in sel.shared}
    if shared:
        save_file(shared, str(out / "shared_weights.safetensors"))
    if algorithm.inner_lrs:
        save_file({n: p.detach().contiguous() for n, p in algorithm.inner_lrs.items()},
                  str(out / "inner_lrs.safetensors"))
    added = algorithm.export(out, base_ref)  # what the algorithm holds beyond the adapter
    tokenizer.save_pretrained(str(out))
    meta = {"base_model": config.model, "base_model_name_or_path": base_ref, "base_model_path": local,
            "algorithm": config.algorithm, "adapter": config.adapter.kind,
            "inner": {"steps": algorithm.inner.steps, "lr": algorithm.inner.lr, "optimizer": algorithm.inner.optimizer},
            "outer_steps": algorithm.outer_steps, "shared_weights": bool(shared), "files": added}
    (out / "metalm.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out
