"""The training loop of one level: optimizer, learning-rate schedule, masked steps, evaluation.

The learning rate is a pure function of the step, so resuming needs only the step count and the
optimizer's buffers, never a scheduler object.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from trainables.fastmask import MaskApplier
from trainables.masks import Masks
from trainables.optim import SGD
from trainables.specs import TrainSpec


def make_optimizer(model: nn.Module, train: TrainSpec, *, lr: float | None = None) -> torch.optim.Optimizer:
    lr = train.lr if lr is None else lr
    if train.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=train.weight_decay)
    return SGD(
        model.parameters(),
        lr=lr,
        momentum=train.momentum,
        nesterov=train.nesterov and train.momentum > 0,
        weight_decay=train.weight_decay,
    )


def lr_at(step: int, *, train: TrainSpec, steps_per_epoch: int, peak_lr: float | None = None) -> float:
    """Learning rate of optimizer step `step` (0-based) within a level."""
    peak = train.lr if peak_lr is None else peak_lr
    warmup = train.warmup_epochs * steps_per_epoch
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    epoch = step / steps_per_epoch
    if train.lr_schedule == "step":
        return peak * train.gamma ** int(epoch // train.step_epochs)
    if train.lr_schedule == "multistep":
        return peak * train.gamma ** sum(epoch >= m for m in train.milestones)
    if train.lr_schedule == "cosine":
        total = train.epochs * steps_per_epoch - warmup
        progress = min((step - warmup) / max(total, 1), 1.0)
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    return peak


def wants_channels_last(model: nn.Module, x: torch.Tensor) -> bool:
    """NHWC ("channels_last") for image batches of models with 2-D convolutions: the layout the
    fast convolutions expect, on CUDA (tensor cores) and on CPU (oneDNN: a resnet20 or conv4
    training step about 1.25x faster than in NCHW on 2 cores). Models without convolutions keep
    the default layout."""
    return x.ndim == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules())


def resolve_precision(precision: str, device: torch.device) -> str:
    """The arithmetic of a lineage's forward passes: "fp32" or "bf16" (autocast, fp32 weights,
    gradients and optimizer state). "auto" is bf16 on CUDA and fp32 elsewhere, so CPU runs stay
    exact unless bf16 is asked for; on CPUs with native bf16 (AVX512-BF16, AMX) asking for it
    makes the matrix products of a small net about 2.5x faster (benchmarks/train_bench.py)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be one of ['auto', 'bf16', 'fp32']; got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str = "auto"):
    """The context of a forward pass in `precision` on `device` (see `resolve_precision`)."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    masks: Masks,
    lr_of_step: Callable[[int], float],
    first_step: int,
    on_step: Callable[[int], None] | None = None,
    forward: nn.Module | None = None,
    precision: str = "auto",
) -> tuple[float, int]:
    """One epoch of masked SGD. Returns (mean training loss, steps taken).

    forward: what computes the logits (a `torch.compile`d wrapper of `model`), default `model`.
    precision: "auto", "fp32" or "bf16" (see `resolve_precision`).

    Pruned weights stay zero: they and their optimizer buffers are zeroed once here (the
    gradual schedule may have pruned more since the last epoch), and each step zeroes their
    gradients before the update (see `MaskApplier.mask_grads`), so weight decay and momentum
    cannot revive them.
    """
    model.train()
    forward = model if forward is None else forward
    # Masks pre-converted to float once; one fused multiply of the gradients per step (a bool
    # mask would be converted on every step, which costs more than the masked step itself on
    # small nets).
    applier = MaskApplier(model, masks)
    applier(optimizer)
    device = next(model.parameters()).device
    forward_context = autocast(device, precision)  # checks `precision` before the first step
    total = torch.zeros((), dtype=torch.float64, device=device)
    step = first_step
    for x, y in batches:
        for group in optimizer.param_groups:
            group["lr"] = lr_of_step(step)
        with forward_context:
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        applier.mask_grads(optimizer)
        optimizer.step()
        total += loss.detach().double()
        step += 1
        if on_step is not None:
            on_step(step)
    n = step - first_step
    # One device sync per epoch, not per step.
    return (total.item() / n if n else float("nan")), n


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, *, y: torch.Tensor, batch_size: int = 1024, device: torch.device | None = None,
    precision: str = "auto",
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on x: [n, ...], y: [n]; batches are moved to
    `device` (default: x's) when the data is streamed from host memory. The loss is summed in
    fp32 whatever the forward pass's `precision`."""
    device = x.device if device is None else device
    forward_context = autocast(device, precision)
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device, non_blocking=True)
        yb = y[start : start + batch_size].to(device, non_blocking=True)
        with forward_context:
            logits = model(xb)
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").double()
        correct += (logits.argmax(1) == yb).sum()
    return loss_sum.item() / len(x), correct.item() / len(x)
