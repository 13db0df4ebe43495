"""The causal-LM loss on target tokens, computing logits only where a target is.

A batch is a dict with ``input_ids`` ``[B, T]``, ``attention_mask`` ``[B, T]`` and ``labels``
``[B, T]`` (``-100`` where there is no loss), aligned with ``input_ids`` as in transformers: the
logit at position ``t`` predicts ``labels[:, t + 1]``. Projecting every position onto a 49k-token
vocabulary is most of a small LM's forward cost, so the backbone runs once and the output head
runs only on the ``M`` target positions of each row.

:func:`prepare_batch` adds ``target_positions`` / ``target_ids`` ``[B, M]`` once per batch (``M``
= most targets in a row; padding entries have id ``-100``). Their shapes depend only on the batch,
so equal-shaped episodes stay stackable for ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .errors import BatchError
from .models import causal_lm

Batch = Mapping[str, Tensor]
IGNORE_INDEX = -100


def prepare_batch(batch: Batch, where: str = "batch") -> dict[str, Tensor]:
    """Check a batch and add ``target_positions`` and ``target_ids`` (both ``[B, M]``).

    Raises:
        BatchError: On a missing key, mismatched shapes or a batch without any target token.
    """
    if "target_positions" in batch and "target_ids" in batch:
        return dict(batch)
    for key in ("input_ids", "labels"):
        if key not in batch:
            raise BatchError(f"{where}: missing {key!r} (have {sorted(batch)})")
    ids, labels = batch["input_ids"], batch["labels"]
    if ids.dim() != 2 or labels.shape != ids.shape:
        raise BatchError(f"{where}: input_ids {tuple(ids.shape)} and labels {tuple(labels.shape)} must both be [B, T]")
    mask = batch.get("attention_mask")
    if mask is not None and mask.shape != ids.shape:
        raise BatchError(f"{where}: attention_mask {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}")
    shifted = labels[:, 1:]
    has_target = shifted != IGNORE_INDEX
    per_row = has_target.sum(1)
    m = int(per_row.max()) if per_row.numel() else 0
    if m == 0:
        raise BatchError(f"{where}: no target tokens (labels are all -100 after the first position)")
    # Stable sort puts each row's target positions first, in order; the rest are padding.
    order = torch.sort((~has_target).to(torch.int8), dim=1, stable=True).indices[:, :m]
    valid = torch.arange(m, device=ids.device).unsqueeze(0) < per_row.unsqueeze(1)
    out = dict(batch)
    out["target_positions"] = order
    out["target_ids"] = torch.where(valid, shifted.gather(1, order), torch.full_like(order, IGNORE_INDEX))
    return out


class _TargetHead(nn.Module):
    """Backbone over every position, output head over the target positions only.

    Holds the model as its child ``m`` so that ``functional_call`` can swap any of its tensors
    (tied embeddings stay tied); the model itself is not modified.
    """

    def __init__(self, model: nn.Module, head: bool = True) -> None:
        super().__init__()
        self.m, self.head = model, head

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, positions: Tensor) -> Tensor:
        lm = causal_lm(self.m)
        backbone = getattr(lm, lm.base_model_prefix)
        # Positions count real tokens, so left-padded rows get the same positions as unpadded ones.
        position_ids = None if attention_mask is None else (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
        picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))  # [B, M, H]
        if not self.head:
            return picked
        logits = lm.get_output_embeddings()(picked)  # [B, M, V]
        cap = getattr(lm.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits


def target_logits(model: nn.Module, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
    """Logits at the target positions, ``[B, M, V]``, with ``params`` swapped into the model.

    Args:
        model: The (PEFT-wrapped) causal LM; not modified.
        params: Tensors by ``model.named_parameters()`` name to use instead of the model's own.
        batch: A batch that went through :func:`prepare_batch`.
    """
    swapped = {f"m.{k}": v for k, v in params.items()}
    args = (batch["input_ids"], batch.get("attention_mask"), batch["target_positions"])
    return functional_call(_TargetHead(model), swapped, args, strict=False)


def target_hidden(model: nn.Module, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
    """Final hidden states at the target positions, ``[B, M, H]`` (the input of the output head).

    Task-specific heads (:class:`metalm.algorithms.Multitask` with ``heads: task``) read the first
    one, the position that predicts the answer's first token.
    """
    swapped = {f"m.{k}": v for k, v in params.items()}
    args = (batch["input_ids"], batch.get("attention_mask"), batch["target_positions"])
    return functional_call(_TargetHead(model, head=False), swapped, args, strict=False)


def _upcast(logits: Tensor) -> Tensor:
    # bf16/fp16 logits lose too much in log-softmax; fp32 and fp64 are kept as they are.
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def lm_loss(model: nn.Module, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
    """Mean cross-entropy over all target tokens of the batch (a scalar)."""
    batch = prepare_batch(batch)
    logits = target_logits(model, params, batch)
    return F.cross_entropy(_upcast(logits).flatten(0, 1), batch["target_ids"].flatten(), ignore_index=IGNORE_INDEX)


def lm_loss_and_accuracy(model: nn.Module, params: Mapping[str, Tensor], batch: Batch) -> tuple[Tensor, Tensor]:
    """The loss of :func:`lm_loss` and the token accuracy (argmax) at the target positions."""
    batch = prepare_batch(batch)
    logits = target_logits(model, params, batch)
    targets = batch["target_ids"]
    loss = F.cross_entropy(_upcast(logits).flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    valid = targets != IGNORE_INDEX
    correct = (logits.argmax(-1) == targets) & valid
    return loss, correct.sum() / valid.sum()
