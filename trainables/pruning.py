"""Magnitude pruning: which surviving weights to remove to reach a level's sparsity.

Counts are exact: a group of N prunable weights keeps round(N · (1 − rate)^k) after k rounds,
so the sparsity after level k is 1 − (1 − rate)^k to the weight, and ties in magnitude are broken
by position (stable sort), so the same weights always give the same mask.
"""
from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn

from trainables.masks import Masks
from trainables.specs import PruneSpec


def _override(name: str, output_layer: str, layer_rates: dict[str, float]) -> float | None:
    for pattern, rate in layer_rates.items():
        if pattern == "output" and name.rpartition(".")[0] == output_layer:
            return rate
        if fnmatch.fnmatchcase(name, pattern):
            return rate
    return None


def prune_groups(names: tuple[str, ...], spec: PruneSpec, *, output_layer: str) -> list[tuple[tuple[str, ...], float]]:
    """Groups ranked together, each with its rate: one global group (scope: global) or one per
    parameter (scope: layerwise); a parameter with a rate override is always its own group."""
    shared: list[str] = []
    groups: list[tuple[tuple[str, ...], float]] = []
    for name in names:
        rate = _override(name, output_layer, spec.layer_rates)
        if rate is not None:
            groups.append(((name,), rate))
        elif spec.scope == "layerwise":
            groups.append(((name,), spec.rate))
        else:
            shared.append(name)
    if shared:
        groups.insert(0, (tuple(shared), spec.rate))
    return groups


def rounds_for(sparsity: float, rate: float) -> float:
    """Number of IMP rounds at `rate` that reach `sparsity`: (1 − rate)^k = 1 − sparsity."""
    return math.log1p(-sparsity) / math.log1p(-rate)


@torch.no_grad()
def magnitude_masks(model: nn.Module, masks: Masks, *, spec: PruneSpec, rounds: float) -> Masks:
    """Masks after `rounds` IMP rounds' worth of pruning, removing the smallest surviving |w|.

    rounds: k for IMP level k; fractional for a target sparsity (oneshot, gradual).
    """
    params = dict(model.named_parameters())
    output_layer = getattr(model, "output_layer", "")
    new = {name: m.clone() for name, m in masks.items()}
    for names, rate in prune_groups(tuple(masks), spec, output_layer=output_layer):
        n_total = sum(masks[n].numel() for n in names)
        n_keep = round(n_total * (1 - rate) ** rounds) if rate > 0 else n_total
        scores = torch.cat([params[n].detach().abs().flatten()[masks[n].flatten()] for n in names])
        if n_keep >= scores.numel():
            continue
        _scatter(new, names, largest_first_by_position(scores, n_keep))
    return new


def largest_first_by_position(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Bool mask of the `n_keep` largest `scores` (1-D), ties broken by position, earlier first:
    exactly the first `n_keep` of a stable descending sort, found by selection (`kthvalue`,
    O(n)) instead of a sort (about 7x faster for a LeNet's 266k weights)."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_keep <= 0:
        return keep
    if bool(torch.isnan(scores).any()):  # a diverged net: the sort's NaN order decides
        order = torch.sort(scores, descending=True, stable=True).indices
        keep[order[:n_keep]] = True
        return keep
    threshold = torch.kthvalue(scores, scores.numel() - n_keep + 1).values
    keep = scores > threshold
    short = n_keep - int(keep.sum())
    if short > 0:  # the tied scores at the threshold, earliest positions first
        keep[(scores == threshold).nonzero().squeeze(1)[:short]] = True
    return keep


def _scatter(masks: Masks, names: tuple[str, ...], keep: torch.Tensor) -> None:
    """Write `keep` (over the surviving weights of `names`, in order) back into `masks`."""
    offset = 0
    for name in names:
        flat = masks[name].flatten()
        alive = flat.nonzero().squeeze(1)
        flat[alive] = keep[offset : offset + alive.numel()]
        offset += alive.numel()
        masks[name] = flat.view_as(masks[name])


def random_masks_like(masks: Masks, counts: dict[str, int], *, generator: torch.Generator) -> Masks:
    """Random masks nested in `masks`, keeping `counts[name]` weights of each parameter."""
    new = {}
    for name, mask in masks.items():
        flat = mask.flatten().clone()
        alive = flat.nonzero().squeeze(1)
        perm = torch.randperm(alive.numel(), generator=generator).to(alive.device)
        flat[alive[perm[counts[name] :]]] = False
        new[name] = flat.view_as(mask)
    return new


def cubic_sparsity(step: int, *, start_step: int, end_step: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)(1 − (t − t0)/(t1 − t0))^3, clamped to [t0, t1]."""
    if end_step <= start_step:
        return final if step >= start_step else initial
    progress = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return final + (initial - final) * (1 - progress) ** 3
