"""Normalized Bures similarity and the angular Procrustes distance, from cross products of
factors F_a^T F_b whose singular values are those of Xc_a^T Xc_b."""

from __future__ import annotations

import math

import torch

from analysis.similarity.spectra import singular_values

EPS = torch.finfo(torch.float64).eps


def nbs(blocks: torch.Tensor, *, norms_a: torch.Tensor, norms_b: torch.Tensor) -> torch.Tensor:
    """||Xc_a^T Xc_b||_* / (||Xc_a||_F ||Xc_b||_F), clipped to [0, 1].

    blocks: [B, fa, fb]; norms_a, norms_b: [B] Frobenius norms of the centred inputs."""
    nuclear = singular_values(blocks).sum(dim=-1)
    return (nuclear / (norms_a * norms_b)).clamp(0.0, 1.0)


def procrustes(similarity: torch.Tensor, dims: int) -> torch.Tensor:
    """arccos(NBS) in [0, pi/2] (Williams et al. 2021).

    arccos amplifies the round-off of an NBS near 1 to about sqrt(2 * round-off); an NBS
    within the round-off of the nuclear norm (about `dims` eps) of 1 is therefore exactly 1,
    so identical shapes are at distance 0 rather than ~1e-8."""
    snapped = torch.where(1.0 - similarity <= 4 * dims * EPS, 1.0, similarity)
    return torch.arccos(snapped).clamp(0.0, math.pi / 2)
