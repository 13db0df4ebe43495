"""Instruments for the problem metalm addresses: objective conflict and uneven generalization.

* :func:`gradient_conflict`: the pairwise cosine similarity of per-task gradients w.r.t. the
  trained parameters, averaged over batches (``T x T``). A negative entry means one step down
  task ``i``'s loss goes up task ``j``'s (the conflict measure of Yu et al. 2020, "Gradient
  Surgery for Multi-Task Learning", arXiv:2001.06782). The language-modeling objective is one
  more task (e.g. ``shakespeare``).

  Which loss: for tasks with candidate answers (classification, multiple choice) the default is
  the *decision* loss, the rank-classification cross-entropy over the options (what evaluation
  scores). The answer tokens' loss of two tasks is dominated by learning the answer format they
  share, so two tasks with the same inputs and swapped labels measured that way look aligned
  (cos +0.86 on a tiny model); at the decision level they are opposite. Generation and
  language-modeling tasks keep the token loss. The result says which loss each task used.
* :func:`split_half`: the noise floor of those cosines. Each task's examples are cut into two
  disjoint halves (class-balanced) and the cosine of the two halves' gradients, measured on batches
  of the same shape, is what the task can agree with *itself*: two tasks with the same rule read at
  about that figure, whatever their examples. :func:`against_noise_floor` divides a cross-task cosine
  by ``sqrt(h_i h_j)`` (Spearman's correction for attenuation, 1904): about +1 for the same rule,
  below for a conflict. Without it, a shared answer format (token loss) or a large sampling noise can
  make two tasks with opposite labels read like two with the same rule.
* :func:`generalization_gap`: few-shot accuracy on seen (meta-train) tasks vs held-out tasks for
  each method, and the gap between them.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import CollateConfig, EpisodeSampler, SamplerConfig, Task, collate
from ..errors import ConfigError
from ..eval.scoring import rank_loss
from ..losses import Batch, lm_loss

LOSSES = ("auto", "decision", "token")


@dataclasses.dataclass(frozen=True)
class Objective:
    """One measurement's loss: ``fn(model)`` is a scalar differentiable w.r.t. the model's own tensors.

    Attributes:
        kind: ``decision`` (rank-classification cross-entropy over options) or ``token``.
    """

    kind: str
    fn: Callable[[nn.Module], Tensor]


def token_objective(batch: Batch) -> Objective:
    """The mean target-token loss of a collated batch."""
    return Objective("token", lambda model: lm_loss(model, {}, batch))


def decision_objective(examples: Sequence[Any], tokenizer, config: CollateConfig | None = None) -> Objective:  # noqa: ANN001
    """The rank-classification cross-entropy of ``examples`` (each with options and a label)."""
    config = config or CollateConfig()
    return Objective("decision", lambda model: rank_loss(model, {}, examples, tokenizer, config))


def spread(items: Sequence[str], k: int) -> list[str]:
    """``k`` items evenly spread over ``items``, first and last included (all of them if ``k >= len``)."""
    if k >= len(items):
        return list(items)
    if k <= 1:
        return list(items[:k])
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def task_gradient(model: nn.Module, params: Mapping[str, Tensor], batch: Batch | Objective) -> Tensor:
    """The gradient of an objective (a collated batch: its mean target-token loss) w.r.t. ``params``
    (the model's own tensors), flattened to ``[n]`` in fp32 (zeros for tensors the loss does not reach)."""
    tensors = list(params.values())
    objective = batch if isinstance(batch, Objective) else token_objective(batch)
    grads = torch.autograd.grad(objective.fn(model), tensors, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).float().flatten() for p, g in zip(tensors, grads,
                                                                                                  strict=True)])


def cosine_matrix(grads: Tensor, chunk: int = 1 << 20) -> Tensor:
    """Pairwise cosine similarities ``[T, T]`` of the rows of ``grads`` ``[T, n]`` (0 for a zero row).

    The Gram matrix is accumulated in float64 over column chunks of ``chunk``: in float32 a dot
    product over ``n ~ 1e8`` entries (a full 135M model) is off by ~1e-3 relative, enough to give a
    vector a cosine of 1.0006 with itself.
    """
    gram = torch.zeros(grads.shape[0], grads.shape[0], dtype=torch.float64, device=grads.device)
    for start in range(0, grads.shape[1], chunk):
        part = grads[:, start:start + chunk].double()
        gram += part @ part.T
    norm = gram.diagonal().sqrt().clamp_min(1e-300)
    return (gram / norm[:, None] / norm[None, :]).to(grads.dtype)


def conflict_batches(tasks: Sequence[Task], tokenizer, *, batches: int = 4,  # noqa: ANN001
                     sampler: SamplerConfig | None = None, collate_config: CollateConfig | None = None,
                     seed: int = 0, device: torch.device | str = "cpu",
                     loss: str = "auto") -> dict[str, list[Objective]]:
    """Fixed measurements per task: each is one episode's support and query examples together.

    The episodes depend only on the task name, ``seed`` and the sampler config, so repeated
    measurements (over a training run, or of several runs) see the same data.

    Args:
        loss: ``auto`` (decision loss for tasks with options, token loss otherwise), ``decision``
            (an error for a task without options) or ``token``.
    """
    if loss not in LOSSES:
        raise ConfigError("loss", f"{loss!r} is not one of {', '.join(LOSSES)}")
    sampler = sampler or SamplerConfig(ways=3, shots=2, queries=2, drop_small_classes=True)
    out: dict[str, list[Objective]] = {}
    for task in tasks:
        stream = EpisodeSampler([task], sampler, seed=zlib.crc32(f"conflict/{task.name}/{seed}".encode()))
        out[task.name] = []
        for _ in range(batches):
            ep = stream.sample()
            examples = [*ep.support, *ep.query]
            has_options = all(ex.options and ex.label >= 0 for ex in examples)
            if loss == "decision" and not has_options:
                raise ConfigError("loss", f"task {task.name} ({task.spec.type}) has no candidate answers; "
                                          "use loss token or auto")
            if loss != "token" and has_options:
                out[task.name].append(decision_objective(examples, tokenizer, collate_config))
            else:
                batch = collate(examples, tokenizer, collate_config)
                out[task.name].append(token_objective({k: v.to(device) for k, v in batch.items()}))
    return out


def gradient_conflict(model: nn.Module, params: Mapping[str, Tensor],
                      batches: Mapping[str, Sequence[Batch | Objective]]) -> dict[str, Any]:
    """Cosine similarity of per-task gradients, averaged over batch index.

    Args:
        model: The causal LM (adapter-wrapped); its own tensors are differentiated.
        params: The tensors to differentiate, by name (e.g. the run's meta-parameters).
        batches: Objectives (or collated batches: token loss) per task name; item ``b`` of every
            task forms one measurement.

    Returns:
        ``{"tasks": [T names], "cosine": [[T x T]], "batches": B, "mean_offdiag": float,
        "min_offdiag": float, "params": n, "losses": {task: "decision" | "token"}}``.
    """
    names = list(batches)
    if len(names) < 2:
        raise ConfigError("tasks", "the conflict of objectives needs at least two tasks")
    n_batches = min(len(v) for v in batches.values())
    if n_batches < 1:
        raise ConfigError("batches", "needs at least one batch per task")
    mats = [cosine_matrix(torch.stack([task_gradient(model, params, batches[t][b]) for t in names]))
            for b in range(n_batches)]
    mean = torch.stack(mats).mean(0)
    off = mean[~torch.eye(len(names), dtype=torch.bool)]
    losses = {t: sorted({b.kind if isinstance(b, Objective) else "token" for b in batches[t][:n_batches]})
              for t in names}
    return {"tasks": names, "cosine": mean.tolist(), "batches": n_batches, "mean_offdiag": float(off.mean()),
            "min_offdiag": float(off.min()), "params": sum(p.numel() for p in params.values()),
            "losses": {t: "+".join(k) for t, k in losses.items()}}


def halves(task: Task, seed: int = 0) -> tuple[Task, Task]:
    """Two tasks holding disjoint halves of ``task``'s examples (each label's examples halved, so both
    keep every class), in a seeded random order."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"halves/{task.name}/{seed}".encode()))
    data = task.data
    labels = data["label"] if task.spec.type == "classification" else [0] * len(data)
    by_label: dict[Any, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    parts: tuple[list[int], list[int]] = ([], [])
    for members in by_label.values():
        order = [members[i] for i in torch.randperm(len(members), generator=gen).tolist()]
        parts[0].extend(order[: len(order) // 2])
        parts[1].extend(order[len(order) // 2:])
    return task.subset(sorted(parts[0]), f"{task.name}.half1"), task.subset(sorted(parts[1]), f"{task.name}.half2")


def split_half(model: nn.Module, params: Mapping[str, Tensor], tasks: Sequence[Task], tokenizer,  # noqa: ANN001
               **batch_options: Any) -> dict[str, float | None]:
    """Each task's within-task cosine: the mean over measurements of the cosine between the gradients
    of two episodes drawn from disjoint halves of its examples (:func:`halves`), ``None`` for a task
    too small to halve at the sampler's shape. ``batch_options`` go to :func:`conflict_batches`
    (``batches``, ``sampler``, ``collate_config``, ``seed``, ``device``, ``loss``)."""
    out: dict[str, float | None] = {}
    for task in tasks:
        try:
            a, b = halves(task, batch_options.get("seed", 0))
            objectives = conflict_batches([a, b], tokenizer, **batch_options)
        except ConfigError:  # a half too small for the episode shape (the sampler says so)
            out[task.name] = None
            continue
        pairs = zip(objectives[a.name], objectives[b.name], strict=True)
        cosines = [float(cosine_matrix(torch.stack([task_gradient(model, params, x), task_gradient(model, params, y)]))
                         [0, 1]) for x, y in pairs]
        out[task.name] = sum(cosines) / len(cosines)
    return out


def against_noise_floor(result: Mapping[str, Any], floor: Mapping[str, float | None]) -> list[list[float | None]]:
    """Cross-task cosines divided by ``sqrt(h_i h_j)`` (``h``: :func:`split_half`), ``None`` where a
    floor is missing or not positive (a task whose halves do not agree has no direction to compare)."""
    names, cos = result["tasks"], result["cosine"]
    out: list[list[float | None]] = []
    for i, a in enumerate(names):
        row: list[float | None] = []
        for j, b in enumerate(names):
            ha, hb = floor.get(a), floor.get(b)
            if ha is None or hb is None or ha <= 0 or hb <= 0:
                row.append(None)
            else:  # the diagonal reads 1: a task against itself is its split-half figure
                row.append(1.0 if i == j else cos[i][j] / (ha * hb) ** 0.5)
        out.append(row)
    return out


def plot_conflict(result: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Draw the cosine matrix of :func:`gradient_conflict` as a heatmap PNG (red: conflict)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result["tasks"]
    size = max(4.0, 0.22 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(result["cosine"], cmap="RdBu", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6 if len(names) > 20 else 8)
    ax.set_yticks(range(len(names)), names, fontsize=6 if len(names) > 20 else 8)
    fig.colorbar(image, ax=ax, label="cosine of task gradients")
    ax.set_title(title or f"objective conflict (mean off-diagonal {result['mean_offdiag']:.3f})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def generalization_gap(harness: Any, seen: Sequence[Task], heldout: Sequence[Task]) -> list[dict[str, Any]]:
    """Macro accuracy of every method of ``harness`` (a :class:`metalm.eval.Harness`) on seen and on
    held-out tasks, and the gap ``seen - heldout``, per method and shot count."""
    on_seen, on_heldout = harness.run(list(seen)), harness.run(list(heldout))
    rows = []
    for a in on_seen["macro"]:
        b = next(r for r in on_heldout["macro"] if r["method"] == a["method"] and r["shots"] == a["shots"])
        rows.append({"method": a["method"], "shots": a["shots"], "seen": a["accuracy"], "seen_ci95": a["ci95"],
                     "heldout": b["accuracy"], "heldout_ci95": b["ci95"], "gap": a["accuracy"] - b["accuracy"]})
    return rows


def plot_gap(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Bars of seen vs held-out accuracy per method (first shot count), with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = rows[0]["shots"]
    rows = [r for r in rows if r["shots"] == shots]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.5))
    ax.bar([x - 0.2 for x in xs], [r["seen"] for r in rows], 0.4, yerr=[r["seen_ci95"] for r in rows],
           label="seen (meta-train) tasks")
    ax.bar([x + 0.2 for x in xs], [r["heldout"] for r in rows], 0.4, yerr=[r["heldout_ci95"] for r in rows],
           label="held-out tasks")
    ax.set_xticks(list(xs), [r["method"] for r in rows])
    ax.set_ylabel(f"accuracy ({shots}-shot)")
    ax.set_title("generalization: seen vs held-out tasks")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def floor_table(result: dict[str, Any]) -> str:
    """A markdown table of a :func:`gradient_conflict` result with ``split_half`` and ``against_floor``:
    per task, its split-half cosine (the noise floor), its cross-task cosines and the same read
    against the floor (cosine / sqrt(h_i h_j): about 1 for the same rule, lower for conflict)."""

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.3f}"

    names = result["tasks"]
    lines = ["| task | split-half | mean cross-task cosine | read against the floor: mean, lowest (task) |",
             "|---|---|---|---|"]
    for i, name in enumerate(names):
        cross = [result["cosine"][i][j] for j in range(len(names)) if j != i]
        read = [(result["against_floor"][i][j], names[j]) for j in range(len(names))
                if j != i and result["against_floor"][i][j] is not None]
        lowest = min(read) if read else None
        mean = sum(r for r, _ in read) / len(read) if read else None
        lines.append(f"| {name} | {fmt(result['split_half'][name])} | {fmt(sum(cross) / len(cross))} | "
                     f"{fmt(mean)}, {fmt(lowest[0]) if lowest else 'n/a'} ({lowest[1] if lowest else '-'}) |")
    return "\n".join(lines)
