"""The diagnosis recipe: what ``metalm diagnose`` runs, callable from Python as :func:`metalm.diagnose`.

Objective conflict of a model's tasks (:func:`~metalm.diagnostics.measures.gradient_conflict`: the
cosine of per-task gradients, read against each task's split-half noise floor) and, with ``gap``,
the seen vs held-out few-shot accuracy of the pretrained and the trained initialization
(:func:`~metalm.diagnostics.measures.generalization_gap`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def diagnose(*, run: str | Path | None = None, model: str | None = None, split: str | None = None,
             tasks: Sequence[str] | None = None, extra_tasks: Sequence[str] = (),
             task_dirs: Sequence[str | Path] = (), batches: int = 4, ways: int | None = None,
             shots: int | None = None, queries: int | None = None, seed: int = 0, loss: str = "auto",
             split_half: bool = True, gap: bool = False, seen: int = 10, gap_shots: int = 4, episodes: int = 4,
             output: str | Path | None = None, plot: str | Path | None = None,
             log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Measure the objective conflict of a run's (or a model's) tasks, and optionally the generalization gap.

    Args:
        run / model: A trained run folder (its weights and selection), or a model with the standard
            adapter initialization; exactly one.
        split / tasks / extra_tasks / task_dirs: The tasks: ``tasks`` (default: the split's meta-train
            tasks; ``split`` default: the run's), plus ``extra_tasks`` (e.g. ``shakespeare``, the LM
            objective); ``task_dirs``: folders of a researcher's own tasks.
        batches / ways / shots / queries / seed / loss: Batches per task averaged over, the episode shape
            (default: the run's sampler), the batches' seed and the loss (``auto``, ``decision``, ``token``).
        split_half: Also each task's split-half noise floor and the cosines read against it.
        gap / seen / gap_shots / episodes: Also few-shot accuracy on ``seen`` meta-train tasks vs the
            held-out ones at ``gap_shots`` shots, ``episodes`` episodes per task.
        output / plot: The JSON (written atomically) and the heatmap (default: ``output`` with .png;
            the gap's bars beside it as ``*_gap.png``); ``None``: nothing written.
        log: Where the progress line and tables go (``None``: nowhere).

    Returns:
        ``{tasks, cosine, mean_offdiag, min_offdiag, ...}`` (:func:`gradient_conflict`), with
        ``split_half`` and ``against_floor``, and ``gap`` / ``gap_tasks`` when asked.
    """
    import torch

    from ..config import from_dict
    from ..run import TrainConfig, build_model, build_registry, load_run, task_lists
    from ..runtime.files import write_atomic
    from .measures import against_noise_floor, conflict_batches, floor_table, gradient_conflict, plot_conflict
    from .measures import split_half as split_half_floor

    say = log or (lambda _line: None)
    if bool(run) == bool(model):
        raise ConfigError("run/model", "give exactly one")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_run(run, device) if run else None
    if loaded is not None:
        config, tokenizer, algorithm = loaded.config, loaded.tokenizer, loaded.load_into_model()
    else:
        config = from_dict(TrainConfig, {"model": model}, source="diagnose")
        tokenizer, _, _, algorithm = build_model(config, device)
    config.split = split or config.split
    config.task_dirs = list(dict.fromkeys([*config.task_dirs, *map(str, task_dirs)]))
    registry = build_registry(config)
    train, _, heldout = task_lists(config, registry)
    names = list(dict.fromkeys([*(tasks or train), *extra_tasks]))
    shape = {"ways": ways, "shots": shots, "queries": queries}
    sampler = dataclasses.replace(config.sampler, **{k: v for k, v in shape.items() if v is not None})
    say(f"metalm diagnose: gradient conflict of {len(names)} tasks, {batches} batches each")
    options = {"batches": batches, "sampler": sampler, "collate_config": config.collate, "seed": seed,
               "device": device, "loss": loss}
    params = algorithm.selection.meta_params(algorithm.model)
    result = gradient_conflict(algorithm.model, params, conflict_batches([registry[n] for n in names], tokenizer,
                                                                         **options))
    plot = Path(plot) if plot else Path(output).with_suffix(".png") if output else None
    if plot is not None:
        plot_conflict(result, plot)
    say(f"mean off-diagonal cosine {result['mean_offdiag']:.3f}, most negative {result['min_offdiag']:.3f}"
        + (f"; heatmap {plot}" if plot else ""))
    if split_half:
        result["split_half"] = split_half_floor(algorithm.model, params, [registry[n] for n in names], tokenizer,
                                                **options)
        result["against_floor"] = against_noise_floor(result, result["split_half"])
        say(floor_table(result))
    if gap:
        result.update(_gap(loaded, algorithm, tokenizer, registry, train, heldout, sampler.ways, seen, gap_shots,
                           episodes, plot, say))
    if output is not None:
        write_atomic(Path(output), json.dumps(result, indent=1))
    return result


def _gap(loaded: Any, algorithm: Any, tokenizer: Any, registry: Any, train: Sequence[str], heldout: Sequence[str],
         ways: int, seen: int, shots: int, episodes: int, plot: Path | None,
         say: Callable[[str], None]) -> dict[str, Any]:
    """``gap`` (:func:`generalization_gap` of zero-shot and the run's row) and ``gap_tasks``; bars beside ``plot``."""
    from ..eval import EvalConfig, Harness, eval_tasks
    from .measures import generalization_gap, plot_gap, spread

    methods = ["zeroshot", *([loaded.kind] if loaded is not None else [])]
    cfg = EvalConfig(shots=[shots], episodes=episodes, methods=methods, ways=ways, queries=2)
    base = loaded.base if loaded is not None else \
        {k: v.detach().clone() for k, v in algorithm.meta_parameters().items()}
    harness = Harness.from_learner(algorithm, tokenizer, base, loaded.trained if loaded is not None else None, cfg)
    picked = spread([n for n in train if registry[n].spec.type != "language_modeling"], seen)
    rows = generalization_gap(harness, eval_tasks(registry, picked), eval_tasks(registry, heldout))
    if plot is not None:
        plot_gap(rows, plot.with_name(plot.stem + "_gap.png"))
    say("| method | seen | held-out | gap |\n|---|---|---|---|\n" + "\n".join(
        f"| {r['method']} | {r['seen']:.3f} ± {r['seen_ci95']:.3f} | {r['heldout']:.3f} ± {r['heldout_ci95']:.3f} | "
        f"{r['gap']:+.3f} |" for r in rows))
    return {"gap": rows, "gap_tasks": {"seen": picked, "heldout": list(heldout)}}
