"""Normalized Bures similarity and the angular Procrustes distance, from cross products of
factors F_a^T F_b whose singular values are those of Xc_a^T Xc_b."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from analysis.similarity.spectra import singular_values

# arccos(s) amplifies an error of s by 1 / sin(theta). The NBS of a near-identical pair
# carries up to ~1e-11 of round-off (its small singular values come from Gram eigenvalues),
# which costs ~1e-6 at theta ~ 1e-5 but under 1e-9 once 1 - NBS > NEAR_ONE (theta > 0.014);
# closer pairs take the angle from the optimal rotation's residual instead.
NEAR_ONE = 1e-4
# float64 elements of the stacked factors of one batch of residuals (128 MiB).
RESIDUAL_ELEMENTS = 1 << 24


def nbs(blocks: torch.Tensor, *, norms_a: torch.Tensor, norms_b: torch.Tensor) -> torch.Tensor:
    """||Xc_a^T Xc_b||_* / (||Xc_a||_F ||Xc_b||_F), clipped to [0, 1].

    blocks: [B, fa, fb]; norms_a, norms_b: [B] Frobenius norms of the centred inputs."""
    nuclear = singular_values(blocks).sum(dim=-1)
    return (nuclear / (norms_a * norms_b)).clamp(0.0, 1.0)


def procrustes(similarity: torch.Tensor, *,
               factors: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The angle arccos(NBS) in [0, pi/2] (Williams et al. 2021), accurate near 0.

    similarity: [B] NBS of the pairs; factors: the pairs' factors (F_a [n, fa], F_b [n, fb])
    of equal shapes. Pairs with 1 - NBS <= NEAR_ONE, where arccos would turn the round-off
    of NBS into ~sqrt(round-off), use `residual_angle` instead; a factor paired with itself
    (the diagonal of all pairs) is at distance 0 exactly, without one."""
    angle = torch.arccos(similarity).clamp(0.0, math.pi / 2)
    itself = [k for k, (a, b) in enumerate(factors) if a is b]
    angle[itself] = 0.0
    near = [k for k in torch.nonzero(1.0 - similarity <= NEAR_ONE).flatten().tolist()
            if factors[k][0] is not factors[k][1]]
    if not near:
        return angle
    step = max(1, RESIDUAL_ELEMENTS // max(1, sum(f.numel() for f in factors[near[0]])))
    for start in range(0, len(near), step):
        chosen = near[start:start + step]
        a = torch.stack([factors[k][0] for k in chosen])
        b = torch.stack([factors[k][1] for k in chosen])
        angle[chosen] = residual_angle(a, b).to(angle)
    return angle


def residual_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The angular Procrustes distance from the residual of the optimal rotation.

    a: [B, n, fa], b: [B, n, fb] centred factors. With A, B normalised to unit Frobenius
    norm, zero-padded to d = max(fa, fb) columns, and R = V U^T from A^T B = U S V^T,
    r = ||A - B R||_F satisfies r^2 = 2 - 2 NBS, so theta = arccos(NBS) = 2 arcsin(r / 2).
    The residual is formed entry by entry, so r is accurate to ~eps (theta of identical
    shapes ~1e-15) where 1 - NBS from the nuclear norm cancels to ~1e-16 and arccos of it
    reads ~1e-8 at best. Returns [B]."""
    width = max(a.shape[-1], b.shape[-1])
    a = torch.nn.functional.pad(a, (0, width - a.shape[-1]))
    b = torch.nn.functional.pad(b, (0, width - b.shape[-1]))
    a = a / torch.linalg.matrix_norm(a)[:, None, None]
    b = b / torch.linalg.matrix_norm(b)[:, None, None]
    u, _, vh = torch.linalg.svd(a.mT @ b)
    residual = torch.linalg.matrix_norm(a - b @ (vh.mT @ u.mT))
    return (2.0 * torch.arcsin(residual / 2.0)).clamp(0.0, math.pi / 2)
