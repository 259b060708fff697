"""Activations of a model's probe layers on a fixed probe set, captured by forward hooks, and
the rule that sizes the probe set. `analysis.extract` stores them once per (probe set,
checkpoint, layer) as `.npy` files.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainables.ids import digest

DEFAULT_PROBE_SIZE = 5000


@torch.no_grad()
def capture(model: nn.Module, x: torch.Tensor, *, layers: tuple[str, ...], batch_size: int = 1024
            ) -> dict[str, np.ndarray]:
    """Outputs of `layers` (named_modules paths) for inputs x: [n, ...] -> {layer: [n, ...]} float32."""
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"probe layer {missing[0]!r} is not a module of the model; have {sorted(modules)[:20]}")
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: chunks[name].append(out.detach().float().cpu()))
        for name in layers
    ]
    try:
        model.eval()
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts).numpy() for name, parts in chunks.items()}


def probe_key(spec: dict, *, size: int, seed: int) -> str:
    """Identity of a probe set: the data it is drawn from (`spec`: a lineage spec's JSON form),
    its (resolved) size and seed."""
    return "p" + digest({"dataset": spec["dataset"], "dataset_options": spec.get("dataset_options", {}),
                         "probe_size": size, "probe_seed": seed})


def probe_size_for(model: nn.Module, *, layers: tuple[str, ...], requested: int | None,
                   example: torch.Tensor) -> int:
    """DESIGN.md's rule: the requested size, else max(5,000, twice the widest probed layer);
    `probe_set` then caps it at the examples the dataset has."""
    if requested is not None:
        return requested
    widths = [int(np.prod(a.shape[1:])) for a in capture(model, example, layers=layers).values()]
    return max(DEFAULT_PROBE_SIZE, 2 * max(widths))
