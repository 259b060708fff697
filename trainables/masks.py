"""Boolean masks per prunable parameter: which weights exist, and the sparsity they imply."""
from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from trainables.specs import EXCLUDE_KINDS, PruneSpec

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor of the parameter's shape

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class LayerSparsity:
    layer: str  # parameter name, e.g. "fc1.weight"
    n_params: int
    n_zero: int

    @property
    def sparsity(self) -> float:
        return self.n_zero / self.n_params if self.n_params else 0.0


@dataclass(frozen=True)
class SparsityReport:
    sparsity: float  # zero fraction over prunable parameters
    sparsity_all: float  # zero fraction over all parameters
    layers: tuple[LayerSparsity, ...]  # prunable parameters, in model order


def _excluded(name: str, module: nn.Module, output_layer: str, exclude: tuple[str, ...]) -> bool:
    module_path, _, leaf = name.rpartition(".")
    for entry in exclude:
        if entry == "bias" and leaf == "bias":
            return True
        if entry == "bn" and isinstance(module, _NORM_TYPES):
            return True
        if entry == "output" and module_path == output_layer:
            return True
        if entry not in EXCLUDE_KINDS and fnmatch.fnmatchcase(name, entry):
            return True
    return False


def prunable_names(model: nn.Module, prune_spec: PruneSpec) -> tuple[str, ...]:
    """Names of the parameters the prune spec may prune, in `named_parameters()` order."""
    modules = dict(model.named_modules())
    output_layer = getattr(model, "output_layer", "")
    names = []
    for name, _ in model.named_parameters():
        module = modules[name.rpartition(".")[0]]
        if not _excluded(name, module, output_layer, prune_spec.exclude):
            names.append(name)
    if not names:
        raise ValueError(
            f"prune.exclude={list(prune_spec.exclude)} leaves no prunable parameter in this model"
        )
    return tuple(names)


def dense_masks(model: nn.Module, names: tuple[str, ...]) -> Masks:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero every pruned weight in place (cheap enough to run after each optimizer step)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask)


@torch.no_grad()
def zero_pruned_state(optimizer: torch.optim.Optimizer, model: nn.Module, *, masks: Masks) -> None:
    """Zero optimizer buffers (momentum, Adam moments) of pruned weights."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        state = optimizer.state.get(params[name])
        if not state:
            continue
        for value in state.values():
            if torch.is_tensor(value) and value.shape == mask.shape:
                value.mul_(mask)


def sparsity_report(model: nn.Module, masks: Masks) -> SparsityReport:
    """Zero counts of the weights themselves (a surviving weight that is exactly 0 counts)."""
    params = dict(model.named_parameters())
    layers = tuple(
        LayerSparsity(name, params[name].numel(), int((params[name] == 0).sum()))
        for name in masks
    )
    n_prunable = sum(layer.n_params for layer in layers)
    zero_prunable = sum(layer.n_zero for layer in layers)
    n_all = sum(p.numel() for p in params.values())
    zero_all = sum(int((p == 0).sum()) for p in params.values())
    return SparsityReport(
        sparsity=zero_prunable / n_prunable,
        sparsity_all=zero_all / n_all,
        layers=layers,
    )


def mask_digest(masks: Masks) -> str:
    """sha256 over the names and bits of the masks: equal masks, equal digests."""
    h = hashlib.sha256()
    for name in sorted(masks):
        h.update(name.encode())
        h.update(masks[name].detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
