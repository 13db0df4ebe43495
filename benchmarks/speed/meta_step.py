"""Meta-step time and peak memory: metalm vs higher vs a naive torch.autograd loop, and FOMAML vs ideal.

Full-parameter MAML on a tiny GPT-2 with a small-LM vocabulary (8,192 tokens, width 128, 4 layers),
rows of 48 tokens of which the last 4 are targets; one task (support and query of ``--rows`` rows).
The three MAML variants compute the same meta-gradient (checked here):

* ``metalm``: :func:`metalm.adapt` + :func:`metalm.lm_loss` (logits only at the 4 target positions);
* ``higher``: ``higher.innerloop_ctx`` with a differentiable SGD over the model's ordinary forward;
* ``naive``: ``functional_call`` + ``torch.autograd.grad(create_graph=True)`` over the ordinary forward.

Time: median of ``--repeats`` interleaved runs in one process. Memory: each variant runs in a
subprocess, and the peak is the growth of the peak resident set over the model's own footprint
(``ru_maxrss``; on CUDA ``torch.cuda.max_memory_allocated``). FOMAML is compared with its ideal,
``(k + 1)`` plain forward+backward steps of the same batch and weights.

    python benchmarks/speed/meta_step.py --steps 1,2,4,8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from jsonout import add_json_argument, write_json  # same directory
from peak import PeakGrowth  # same directory
from torch.func import functional_call

import metalm

LR = 0.01


def build(device: torch.device, rows: int, seed: int = 0) -> tuple[torch.nn.Module, dict, dict]:
    config = metalm.tiny_config("gpt2", vocab_size=8192, n_embd=128, n_layer=4, n_head=4, n_positions=64)
    model = metalm.load_model(config, seed=seed, device=device)
    g = torch.Generator().manual_seed(seed)

    def batch() -> dict:
        ids = torch.randint(0, 8192, (rows, 48), generator=g)
        labels = torch.full_like(ids, -100)
        labels[:, -4:] = ids[:, -4:]
        return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                             "labels": labels}.items()}

    return model, batch(), batch()


def ordinary_loss(module: Callable, batch: dict) -> torch.Tensor:
    """The ordinary forward of ``module`` (the model, or a peer's functional copy of it): logits at
    every position, loss on the targets."""
    logits = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)


def full_loss(model: torch.nn.Module, params: dict, batch: dict) -> torch.Tensor:
    """:func:`ordinary_loss` with ``params`` swapped in (``functional_call``)."""
    return ordinary_loss(lambda **kw: functional_call(model, params, (), kw), batch)


def math_attention(fn: Callable) -> Callable:
    """Run ``fn`` with SDPA's math kernel: the fused CPU kernels have no double backward (metalm pins
    it by itself for second-order inner loops; the peers need it done for them)."""

    def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return fn(*args, **kwargs)

    return wrapped


def step_metalm(model, support, query, k, first_order=False):  # noqa: ANN001, ANN201
    params = dict(model.named_parameters())
    adapted = metalm.adapt(model, params, support, steps=k, lr=LR, first_order=first_order)
    return torch.autograd.grad(metalm.lm_loss(model, adapted, query), list(params.values()))


def step_recompute(model, support, query, k, first_order=False):  # noqa: ANN001, ANN201
    """metalm's MAML with ``recompute``: each inner step's graph rebuilt during the meta-backward."""
    params = dict(model.named_parameters())
    adapted = metalm.adapt(model, params, support, steps=k, lr=LR, first_order=first_order, recompute=True)
    return torch.autograd.grad(metalm.lm_loss(model, adapted, query), list(params.values()))


def step_imaml(model, support, query, k, first_order=False):  # noqa: ANN001, ANN201
    """iMAML's implicit meta-gradient (lam 1, 5 conjugate-gradient steps); no graph of the inner steps."""
    from metalm.algorithms import implicit_task_gradient

    start = {n: p.detach() for n, p in model.named_parameters()}
    inner = metalm.InnerConfig(steps=k, lr=LR, first_order=True, proximal=1.0)
    return implicit_task_gradient(model, start, support, query, inner, steps=5)[0]


@math_attention
def step_naive(model, support, query, k, first_order=False):  # noqa: ANN001, ANN201
    params = dict(model.named_parameters())
    fast = dict(params)
    for _ in range(k):
        grads = torch.autograd.grad(full_loss(model, fast, support), list(fast.values()), create_graph=not first_order)
        fast = {n: p - LR * g for (n, p), g in zip(fast.items(), grads, strict=True)}
    return torch.autograd.grad(full_loss(model, fast, query), list(params.values()))


@math_attention
def step_higher(model, support, query, k, first_order=False):  # noqa: ANN001, ANN201
    import higher

    opt = torch.optim.SGD(model.parameters(), lr=LR)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False, track_higher_grads=not first_order) as (f, d):
        for _ in range(k):
            d.step(ordinary_loss(f, support))
        return torch.autograd.grad(ordinary_loss(f, query), list(model.parameters()))


@math_attention
def step_learn2learn(model, support, query, k, first_order=False):  # noqa: ANN001, ANN201
    """learn2learn's MAML wrapper: ``clone()`` the model, ``adapt(loss)`` k times (separate environment,
    see learn2learn_env.sh)."""
    import learn2learn as l2l

    learner = l2l.algorithms.MAML(model, lr=LR, first_order=first_order).clone()
    for _ in range(k):
        learner.adapt(ordinary_loss(learner, support))
    return torch.autograd.grad(ordinary_loss(learner, query), list(model.parameters()))


def step_ideal(model, support, query, k, first_order=True):  # noqa: ANN001, ANN201
    """(k + 1) plain forward+backward passes of the same loss on the same weights (no update)."""
    params = dict(model.named_parameters())
    for batch in [support] * k + [query]:
        grads = torch.autograd.grad(metalm.lm_loss(model, params, batch), list(params.values()))
    return grads


def reptile_metalm(model, support, query, k, first_order=True):  # noqa: ANN001, ANN201
    """Reptile's update direction θ - φ after k first-order steps of :func:`metalm.adapt` (no graph kept)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    adapted = metalm.adapt(model, params, support, steps=k, lr=LR, first_order=True)
    with torch.no_grad():
        return [p - adapted[n] for n, p in params.items()]


def reptile_naive(model, support, query, k, first_order=True):  # noqa: ANN001, ANN201
    """The same with the ordinary forward and a plain ``torch.autograd.grad`` loop."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    fast = {n: p.requires_grad_() for n, p in ((n, p.clone()) for n, p in params.items())}
    for _ in range(k):
        grads = torch.autograd.grad(full_loss(model, fast, support), list(fast.values()))
        with torch.no_grad():
            fast = {n: (p - LR * g).requires_grad_() for (n, p), g in zip(fast.items(), grads, strict=True)}
    with torch.no_grad():
        return [p - fast[n] for n, p in params.items()]


def reptile_higher(model, support, query, k, first_order=True):  # noqa: ANN001, ANN201
    """The same with ``higher`` (``track_higher_grads=False``: no meta-graph)."""
    import higher

    opt = torch.optim.SGD(model.parameters(), lr=LR)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=True, track_higher_grads=False) as (f, d):
        for _ in range(k):
            d.step(ordinary_loss(f, support))
        with torch.no_grad():
            return [p - q for p, q in zip(model.parameters(), f.parameters(), strict=True)]


def reptile_ideal(model, support, query, k, first_order=True):  # noqa: ANN001, ANN201
    """k plain forward+backward passes of the support loss (no update): Reptile's floor."""
    params = dict(model.named_parameters())
    for _ in range(k):
        grads = torch.autograd.grad(metalm.lm_loss(model, params, support), list(params.values()))
    return grads


VARIANTS: dict[str, Callable] = {"metalm": step_metalm, "recompute": step_recompute, "imaml": step_imaml,
                                 "higher": step_higher,
                                 "naive": step_naive,
                                 "ideal": step_ideal, "learn2learn": step_learn2learn,
                                 "reptile_metalm": reptile_metalm, "reptile_naive": reptile_naive,
                                 "reptile_higher": reptile_higher, "reptile_ideal": reptile_ideal}


def saved_tensors(model, support, query, k: int) -> None:  # noqa: ANN001
    """Print what metalm's MAML step keeps for the backward, by tensor shape (distinct storages)."""
    import collections

    by_shape: collections.Counter[str] = collections.Counter()
    seen: set[tuple[int, int]] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            by_shape[str(tuple(t.shape))] += key[1]
        return t

    params = dict(model.named_parameters())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        metalm.lm_loss(model, metalm.adapt(model, params, support, steps=k, lr=LR), query)
    print(f"saved for backward by a metalm MAML step, k={k}: {sum(by_shape.values()) / 2**20:.1f} MiB")
    print("| shape | MiB |\n|---|---|")
    for shape, size in by_shape.most_common(8):
        print(f"| {shape} | {size / 2**20:.1f} |")


def timed(fn: Callable, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_memory(variant: str, k: int, first_order: bool, rows: int, device: torch.device) -> float:
    """MiB above the model's footprint at the peak of one meta-step, measured in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--memory-of", variant, "--steps", str(k), "--rows", str(rows),
                          *(["--first-order"] if first_order else []), "--device", device.type],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["mib"]


def _memory_child(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    model, support, query = build(device, args.rows)
    k = int(args.steps)
    with torch.no_grad():  # touch the weights once, so lazily mapped pages count in the baseline
        metalm.lm_loss(model, {}, support)
    peak = PeakGrowth(device)
    VARIANTS[args.memory_of](model, support, query, k, args.first_order)
    print(json.dumps({"mib": peak.mib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="1,2,4,8")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--saved", action="store_true", help="only list what a MAML step saves for backward")
    parser.add_argument("--learn2learn", action="store_true",
                        help="compare with learn2learn's MAML instead (run in the learn2learn_env.sh environment)")
    parser.add_argument("--reptile", action="store_true", help="the Reptile table instead")
    parser.add_argument("--memory-table", action="store_true",
                        help="peak memory and time of MAML, MAML with recompute, FOMAML and higher by k instead")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--first-order", action="store_true", help=argparse.SUPPRESS)
    add_json_argument(parser)
    args = parser.parse_args()
    if args.memory_of:
        return _memory_child(args)
    try:
        _tables(args)
    finally:  # the rows measured so far, also when a later row fails
        write_json(args.json, ROWS, steps=args.steps, rows_per_set=args.rows, repeats=args.repeats)


def _tables(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    model, support, query = build(device, args.rows)
    if args.saved:
        return saved_tensors(model, support, query, int(args.steps.split(",")[0]))
    if args.reptile:
        return compare_reptile(args, device, model, support, query)
    ref = step_naive(model, support, query, 2)
    for name in ("metalm", "recompute", "learn2learn" if args.learn2learn else "higher"):
        got = VARIANTS[name](model, support, query, 2)
        assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(ref, got, strict=True)), name
    if args.learn2learn:
        return compare_learn2learn(args, device, model, support, query)
    if args.memory_table:
        return memory_table(args, device, model, support, query)
    print(f"tiny GPT-2 (vocab 8192, width 128, 4 layers), {args.rows} rows x 48 tokens (4 targets) per set, "
          f"{device}; the three MAML meta-gradients agree")
    print("| k | MAML metalm s | higher s | naive s | metalm / higher time | metalm / higher peak memory "
          "| FOMAML metalm s | ideal (k+1)(fwd+bwd) s | FOMAML / ideal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in (int(x) for x in args.steps.split(",")):
        med = medians({**{n: (VARIANTS[n], False) for n in ("metalm", "higher", "naive")},
                       "fomaml": (step_metalm, True), "ideal": (step_ideal, True)},
                      model, support, query, k, args.repeats, device)
        mem = memory_ratio(args, "metalm", "higher", k, False, device)
        print(f"| {k} | {med['metalm']:.3f} | {med['higher']:.3f} | {med['naive']:.3f} | "
              f"{med['metalm'] / med['higher']:.2f} | {mem} | {med['fomaml']:.3f} | {med['ideal']:.3f} | "
              f"{med['fomaml'] / med['ideal']:.2f} |", flush=True)
        ROWS.append({"table": "maml", "k": k, "seconds": med, "memory_metalm_over_higher": mem})


ROWS: list[dict] = []  # every table row measured, for --json


def medians(variants: dict[str, tuple[Callable, bool]], model, support, query, k: int, repeats: int,  # noqa: ANN001
            device: torch.device) -> dict[str, float]:
    """Median seconds of each ``name -> (step function, first_order)`` over ``repeats`` interleaved
    runs, so drifts in machine load hit every variant alike."""
    times: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(repeats):
        for name, (fn, first_order) in variants.items():
            times[name].append(timed(lambda fn=fn, fo=first_order: fn(model, support, query, k, fo), device))
    return {n: statistics.median(v) for n, v in times.items()}


def memory_ratio(args: argparse.Namespace, ours: str, theirs: str, k: int, first_order: bool,
                 device: torch.device) -> str:
    """``ours / theirs`` peak memory of two variants (fresh processes), or ``-`` with ``--no-memory``."""
    if args.no_memory:
        return "-"
    a, b = (peak_memory(n, k, first_order, args.rows, device) for n in (ours, theirs))
    return f"{a / b:.2f} ({a:.0f} / {b:.0f} MiB)"


def compare_reptile(args: argparse.Namespace, device: torch.device, model, support, query) -> None:  # noqa: ANN001
    ref = reptile_naive(model, support, query, 2)
    for name in ("reptile_metalm", "reptile_higher"):
        got = VARIANTS[name](model, support, query, 2)
        assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-7) for a, b in zip(ref, got, strict=True)), name
    print(f"tiny GPT-2 (vocab 8192, width 128, 4 layers), {args.rows} rows x 48 tokens (4 targets) per set, "
          f"{device}; Reptile's update θ - φ agrees across the three")
    print("| k | Reptile metalm s | higher s | naive s | metalm / higher time | metalm / higher peak memory "
          "| ideal k(fwd+bwd) s | metalm / ideal |")
    print("|---|---|---|---|---|---|---|---|")
    for k in (int(x) for x in args.steps.split(",")):
        med = medians({n: (VARIANTS[f"reptile_{n}"], True) for n in ("metalm", "higher", "naive", "ideal")},
                      model, support, query, k, args.repeats, device)
        mem = memory_ratio(args, "reptile_metalm", "reptile_higher", k, True, device)
        print(f"| {k} | {med['metalm']:.3f} | {med['higher']:.3f} | {med['naive']:.3f} | "
              f"{med['metalm'] / med['higher']:.2f} | {mem} | {med['ideal']:.3f} | "
              f"{med['metalm'] / med['ideal']:.2f} |", flush=True)
        ROWS.append({"table": "reptile", "k": k, "seconds": med, "memory_metalm_over_higher": mem})


def compare_learn2learn(args: argparse.Namespace, device: torch.device, model, support, query) -> None:  # noqa: ANN001
    import learn2learn

    print(f"tiny GPT-2 (vocab 8192, width 128, 4 layers), {args.rows} rows x 48 tokens (4 targets) per set, "
          f"{device}, torch {torch.__version__}, learn2learn {learn2learn.__version__}; meta-gradients agree")
    print("| k | MAML metalm s | learn2learn s | metalm / learn2learn time | metalm / learn2learn peak memory "
          "| FOMAML metalm s | learn2learn s | metalm / learn2learn |")
    print("|---|---|---|---|---|---|---|---|")
    for k in (int(x) for x in args.steps.split(",")):
        med = medians({"metalm": (step_metalm, False), "l2l": (step_learn2learn, False),
                       "fo_metalm": (step_metalm, True), "fo_l2l": (step_learn2learn, True)},
                      model, support, query, k, args.repeats, device)
        mem = memory_ratio(args, "metalm", "learn2learn", k, False, device)
        print(f"| {k} | {med['metalm']:.3f} | {med['l2l']:.3f} | {med['metalm'] / med['l2l']:.2f} | {mem} | "
              f"{med['fo_metalm']:.3f} | {med['fo_l2l']:.3f} | {med['fo_metalm'] / med['fo_l2l']:.2f} |", flush=True)
        ROWS.append({"table": "learn2learn", "k": k, "seconds": med, "memory_metalm_over_learn2learn": mem})

def memory_table(args: argparse.Namespace, device: torch.device, model, support, query) -> None:  # noqa: ANN001
    """Peak memory (fresh process per point) and median time of MAML, MAML with ``recompute``, iMAML,
    FOMAML and higher's MAML, by inner steps k."""
    print(f"tiny GPT-2 (vocab 8192, width 128, 4 layers), full-parameter MAML, {args.rows} rows x 48 tokens per set, "
          f"{device}; peak = growth over the model's footprint (MiB), time = median of {args.repeats}")
    print("| k | MAML MiB | recompute MiB | iMAML MiB | FOMAML MiB | higher MiB | recompute / higher | MAML s "
          "| recompute s | iMAML s | FOMAML s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k in (int(x) for x in args.steps.split(",")):
        mib = {n: peak_memory(v, k, fo, args.rows, device)
               for n, (v, fo) in {"maml": ("metalm", False), "recompute": ("recompute", False),
                                  "imaml": ("imaml", False), "fomaml": ("metalm", True),
                                  "higher": ("higher", False)}.items()}
        med = medians({"maml": (step_metalm, False), "recompute": (step_recompute, False),
                       "imaml": (step_imaml, False), "fomaml": (step_metalm, True)}, model, support, query, k,
                      args.repeats, device)
        print(f"| {k} | {mib['maml']:.0f} | {mib['recompute']:.0f} | {mib['imaml']:.0f} | {mib['fomaml']:.0f} | "
              f"{mib['higher']:.0f} | {mib['recompute'] / mib['higher']:.2f} | {med['maml']:.3f} | "
              f"{med['recompute']:.3f} | {med['imaml']:.3f} | {med['fomaml']:.3f} |", flush=True)
        ROWS.append({"table": "memory", "k": k, "peak_mib": mib, "seconds": med})


if __name__ == "__main__":
    main()
