"""Locality of the connections that survive pruning in a fully connected first layer
(Pellegrini & Biroli 2021): does each hidden unit keep inputs from one patch of the image?

Input index j of a flattened example (`nn.Flatten` order) of `input_shape` (C, H, W) is
channel j // (H W) at spatial coordinate (j // W mod H, j mod W); of (C, L) channel j // L at
j mod L; of (L,) channel 0 at j. Distances are Euclidean between spatial coordinates, in
pixels (or samples); channels never add distance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

_CHUNK_UNITS = 128  # units per FFT chunk: bounds memory to ~15 MB for 3x32x32 inputs


@dataclass(frozen=True)
class ReceptiveFields:
    """Per-unit locality of one layer's surviving connections, and its pair-distance histograms."""

    layer: str  # module path of the layer, e.g. "fc1"
    n_inputs: np.ndarray  # [units] int64: surviving connections of each unit
    spread: np.ndarray  # [units] float64: mean distance of surviving inputs to their centroid; NaN if none
    locality: np.ndarray  # [units] float64: 1 - spread / random-mask spread; NaN if n_inputs <= 1
    displacement_same_channel: np.ndarray  # [bins] int64: pairs of one unit's inputs in the same channel
    displacement_cross_channel: np.ndarray  # [bins] int64: pairs in different channels
    bins: np.ndarray  # [bins + 1] float64 edges: 0, 0.5, 1.5, ..., K + 0.5 (bin k = distance rounded to k)


def receptive_fields(mask: Tensor, input_shape: tuple[int, ...], *, generator: torch.Generator,
                     n_random: int = 8, layer: str = "") -> ReceptiveFields:
    """Receptive-field statistics of `mask: [units, inputs]` (True = connection survives).

    For unit u with surviving inputs S (n = |S|) at spatial coordinates x_j:
        spread(u)   = mean_{j in S} || x_j - mean_{k in S} x_k ||        (NaN when n = 0)
        locality(u) = 1 - spread(u) / mean_{r=1..n_random} spread(R_r(u))
    where each R_r(u) is n inputs drawn uniformly without replacement by `generator` (a CPU
    `torch.Generator`). Locality is 0 for a unit as spread out as chance, tends to 1 for a
    compact patch, and is NaN when n <= 1 or the baseline spread is 0.

    The histograms count every unordered pair of one unit's surviving inputs by the distance
    between their spatial coordinates, split into same and different input channel, summed
    over units; bins are fixed by `input_shape` (see `ReceptiveFields.bins`), so histograms of
    checkpoints of one model and dataset add up and compare. The counts are exact: pairs are
    never enumerated or sampled but counted per displacement by FFT cross-correlation of each
    unit's mask with itself, so a 1024 x 3072 mask takes about half a second on one CPU core.
    """
    mask = _check_mask(mask, input_shape, n_random)
    spatial, channels = _spatial_shape(input_shape)
    coords = _coordinates(spatial, channels)
    n_inputs, spread = _spread(mask.double(), coords)
    baseline = _random_spread(n_inputs, coords, generator, n_random)
    locality = 1 - spread / baseline
    locality[(n_inputs <= 1) | ~(baseline > 0)] = math.nan
    edges = _bin_edges(spatial)
    same, cross = _pair_histograms(mask, channels, spatial, edges)
    return ReceptiveFields(layer=layer, n_inputs=n_inputs.numpy(), spread=spread.numpy(), locality=locality.numpy(),
                           displacement_same_channel=same, displacement_cross_channel=cross, bins=edges)


def first_layer_mask(model: nn.Module, masks: dict[str, Tensor]) -> tuple[str, Tensor]:
    """(module path, weight mask [units, inputs] bool on CPU) of the first layer of a fully
    connected model (lenet_300_100, fcn). A model whose first weight layer is a convolution
    has no per-input connections to localise: `ValueError`, as for an unmasked first layer."""
    for path, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            raise ValueError(f"receptive fields need a fully connected first layer; {type(model).__name__} "
                             f"starts with convolution {path!r}; use e.g. 'lenet_300_100' or 'fcn'")
        if isinstance(module, nn.Linear):
            name = f"{path}.weight"
            if name not in masks:
                raise ValueError(f"no mask for the first layer's weight {name!r}; masks have {sorted(masks)}")
            return path, masks[name].detach().to("cpu", torch.bool)
    raise ValueError(f"model {type(model).__name__} has no nn.Linear layer")


def receptive_field_rows(checkpoint_id: str, rf: ReceptiveFields) -> list[dict]:
    """Rows of the `receptive_fields` table, one per unit; undefined spread or locality is None (null)."""
    def value(v: float) -> float | None:
        return None if math.isnan(v) else float(v)

    return [
        {"checkpoint_id": checkpoint_id, "layer": rf.layer, "unit": unit, "n_inputs": int(rf.n_inputs[unit]),
         "spread": value(rf.spread[unit]), "locality": value(rf.locality[unit])}
        for unit in range(len(rf.n_inputs))
    ]


def _check_mask(mask: Tensor, input_shape: tuple[int, ...], n_random: int) -> Tensor:
    ok_shape = (isinstance(input_shape, (tuple, list)) and 1 <= len(input_shape) <= 3
                and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape))
    if not ok_shape:
        raise ValueError(f"input_shape must be (C, H, W), (C, L) or (L,) positive integers; got {input_shape!r}")
    if mask.ndim != 2 or mask.shape[1] != math.prod(input_shape):
        raise ValueError(f"mask must be [units, {math.prod(input_shape)}] for input_shape {tuple(input_shape)}; "
                         f"got {tuple(mask.shape)}")
    if not isinstance(n_random, int) or isinstance(n_random, bool) or n_random < 1:
        raise ValueError(f"n_random must be a positive integer; got {n_random!r}")
    return mask.detach().cpu() != 0


def _spatial_shape(input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """((H, W) or (L,), number of channels)."""
    if len(input_shape) == 1:
        return (input_shape[0],), 1
    return tuple(input_shape[1:]), input_shape[0]


def _coordinates(spatial: tuple[int, ...], channels: int) -> Tensor:
    """[channels * prod(spatial), len(spatial)] float64 spatial coordinates in flatten order."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in spatial], indexing="ij"), -1)
    return grid.reshape(-1, len(spatial)).repeat(channels, 1)


def _spread(mask: Tensor, coords: Tensor) -> tuple[Tensor, Tensor]:
    """mask: [units, inputs] float64 0/1, coords: [inputs, d] → (n_inputs [units] int64, spread [units])."""
    n = mask.sum(dim=1)
    centroid = (mask @ coords) / n[:, None]  # NaN rows for units without inputs, giving NaN spread
    distance = torch.cdist(centroid, coords)  # [units, inputs]
    return n.long(), (distance * mask).sum(dim=1) / n


def _random_spread(n_inputs: Tensor, coords: Tensor, generator: torch.Generator, n_random: int) -> Tensor:
    """[units] mean spread of `n_random` uniformly random masks with each unit's own n_inputs.

    A random subset of size n is the first n inputs of a random permutation; one permutation
    per draw serves every distinct n at once, so units with equal n_inputs share their draws.
    Each unit's baseline is still the mean over `n_random` independent uniform n-subsets, and
    the cost grows with the number of distinct n_inputs, not of units.
    """
    sizes, unit_size = torch.unique(n_inputs, return_inverse=True)
    total = torch.zeros(len(sizes), dtype=torch.float64)
    for _ in range(n_random):
        rank = torch.empty(len(coords), dtype=torch.long)
        rank[torch.randperm(len(coords), generator=generator)] = torch.arange(len(coords))
        total += _spread((rank[None, :] < sizes[:, None]).double(), coords)[1]
    return (total / n_random)[unit_size]


def _bin_edges(spatial: tuple[int, ...]) -> np.ndarray:
    """0, 0.5, 1.5, ..., K + 0.5 with K the largest distance rounded up: bin 0 holds
    coincident positions only (cross-channel), bin k distances in [k - 0.5, k + 0.5)."""
    largest = math.ceil(math.sqrt(sum((s - 1) ** 2 for s in spatial)))
    return np.concatenate([[0.0], np.arange(largest + 1) + 0.5])


def _pair_histograms(mask: Tensor, channels: int, spatial: tuple[int, ...],
                     edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unordered same- and cross-channel pair counts per distance bin, summed over units.

    The autocorrelation of a unit's channel maps counts ordered pairs per displacement;
    summed over channels it gives same-channel pairs, and the autocorrelation of the
    channel-summed spectrum gives all pairs, so cross = all - same. Padding every spatial
    axis to twice its size keeps displacements from wrapping around.
    """
    dims = tuple(range(2, 2 + len(spatial)))
    padded = tuple(2 * s for s in spatial)
    same = torch.zeros(padded, dtype=torch.float64)
    both = torch.zeros(padded, dtype=torch.float64)
    for start in range(0, len(mask), _CHUNK_UNITS):
        chunk = mask[start:start + _CHUNK_UNITS].double().reshape(-1, channels, *spatial)
        spectrum = torch.fft.rfftn(chunk, s=padded, dim=dims)  # [units, channels, *padded/2]
        same += torch.fft.irfftn(_power(spectrum).sum(dim=(0, 1)), s=padded)
        both += torch.fft.irfftn(_power(spectrum.sum(dim=1)).sum(dim=0), s=padded)
    same, both = same.round(), both.round()
    cross = both - same
    same[(0,) * len(spatial)] -= float(mask.sum())  # a unit's input paired with itself is no pair
    distance = _displacement_lengths(padded).numpy().ravel()
    # Ordered pair counts: every unordered pair appears once at +d and once at -d.
    hist_same = np.histogram(distance, bins=edges, weights=same.numpy().ravel())[0] / 2
    hist_cross = np.histogram(distance, bins=edges, weights=cross.numpy().ravel())[0] / 2
    return np.rint(hist_same).astype(np.int64), np.rint(hist_cross).astype(np.int64)


def _power(spectrum: Tensor) -> Tensor:
    """|z|^2 without the square root that `abs` would take."""
    return torch.view_as_real(spectrum).square().sum(dim=-1)


def _displacement_lengths(padded: tuple[int, ...]) -> Tensor:
    """[*padded] Euclidean length of the displacement each circular FFT index stands for."""
    axes = [torch.fft.fftfreq(p, d=1.0 / p, dtype=torch.float64) for p in padded]  # 0, 1, ..., -1
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(g ** 2 for g in grids))
