"""Shared fixtures: tiny models built from configs and synthetic episodes (no downloads)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import metalm
from metalm import AdapterConfig, MetaConfig, SyntheticTasks

ARCHS = ["gpt2", "llama"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """METALM_HOME holding the fixture data of tests/data/fixtures.py."""
    from .data.fixtures import make_home

    path = make_home(tmp_path / "home")
    monkeypatch.setenv("METALM_HOME", str(path))
    return path


@pytest.fixture
def registry(home, tmp_path):
    from metalm.data import TaskRegistry

    from .data.fixtures import make_tasks_dir

    return TaskRegistry.from_dirs(make_tasks_dir(tmp_path))


def make_model(arch: str = "gpt2", *, dtype: torch.dtype = torch.float64, adapter: AdapterConfig | None = None,
               attn: str = "sdpa", seed: int = 0, **overrides) -> nn.Module:
    """A tiny random causal LM of ``arch``, optionally wrapped with ``adapter``."""
    model = metalm.load_model(metalm.tiny_config(arch, **overrides), dtype=dtype, seed=seed, attn_implementation=attn)
    if adapter is not None:
        model = metalm.apply_adapter(model, adapter)
        # PEFT initializes LoRA's B to zero; give it values so every test exercises a non-trivial adapter.
        torch.manual_seed(seed + 1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    return model


def episodes(n: int = 2, shots: int = 2, queries: int = 2, seed: int = 0, vocab: int = 128) -> list[metalm.Episode]:
    tasks = SyntheticTasks(vocab, n_classes=3, seq_len=10)
    return tasks.episodes(n, shots, queries, torch.Generator().manual_seed(seed))


def reference_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Causal-LM loss through the model's ordinary forward over every position (an independent path)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)


def with_values(model: nn.Module, values: dict[str, Tensor]) -> nn.Module:
    """A deep copy of ``model`` whose named tensors are set to ``values`` (leaves with grad)."""
    clone = copy.deepcopy(model)
    named = dict(clone.named_parameters())
    with torch.no_grad():
        for n, v in values.items():
            named[n].copy_(v)
    for p in clone.parameters():
        p.requires_grad_(False)
    for n in values:
        named[n].requires_grad_(True)
    return clone


def grads_of(model: nn.Module, names, loss_fn: Callable[[nn.Module], Tensor]) -> dict[str, Tensor]:
    """Gradient of ``loss_fn(model)`` w.r.t. the named tensors, by plain backward."""
    named = dict(model.named_parameters())
    loss = loss_fn(model)
    gs = torch.autograd.grad(loss, [named[n] for n in names], allow_unused=True, materialize_grads=True)
    return dict(zip(names, gs, strict=True))


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture
def lora() -> AdapterConfig:
    return AdapterConfig(kind="lora", rank=2, alpha=4.0, layers="top:2")


@pytest.fixture
def meta_none() -> MetaConfig:
    return MetaConfig()


def directional_derivatives(params: dict[str, Tensor], objective: Callable[[], float], h: float,
                            seed: int = 1) -> tuple[float, float]:
    """``(analytic, numeric)`` derivatives of ``objective`` along a random direction of ``params``: from
    their ``.grad`` (already computed), and by central finite differences of step ``h`` (the tensors are
    moved and put back in place)."""
    gen = torch.Generator().manual_seed(seed)
    direction = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
    analytic = sum(float((p.grad * direction[n]).sum()) for n, p in params.items())
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for n, p in params.items():
                p.add_(sign * h * direction[n])
        values.append(objective())
        with torch.no_grad():
            for n, p in params.items():
                p.sub_(sign * h * direction[n])
    return analytic, (values[0] - values[1]) / (2 * h)
