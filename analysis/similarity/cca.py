"""The CCA family on pairs of rank-aware orthonormal bases.

Every function takes a batch of blocks C = Qa^T Qb ([B, ra, rb], same shape across the batch),
whose singular values are the canonical correlations, and the two sides' sketches."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from analysis.similarity.sketch import Sketch, fewest_reaching
from analysis.similarity.spectra import side_vectors, singular_values


def mean_cca(blocks: torch.Tensor, options: Mapping[str, Any]) -> torch.Tensor:
    """Mean of all min(ra, rb) canonical correlations, or of the leading ones reaching
    `truncate` of their sum (google/svcca's result['mean']). blocks: [B, ra, rb] -> [B]."""
    rho = singular_values(blocks)
    truncate = options.get("truncate")
    if truncate is None:
        return rho.mean(dim=-1)
    return torch.stack([r[:fewest_reaching(r, truncate)].mean() for r in rho])


def mean_cca_sq(blocks: torch.Tensor) -> torch.Tensor:
    """Mean squared canonical correlation: ||C||_F^2 / min(ra, rb), no SVD needed."""
    return (blocks * blocks).sum(dim=(-2, -1)) / min(blocks.shape[-2:])


# Canonical correlations closer than this are tied: their canonical variates are then any
# orthonormal basis of a common subspace (exactly so when rank(Xc) + rank(Yc) > n and the
# column spaces intersect, giving correlations of 1), and PWCCA's weights depend on the basis.
TIE_GAP = 1e-8


def _tied_clusters(rho: torch.Tensor) -> list[tuple[int, int]]:
    """[start, stop) of each run of two or more consecutive tied correlations (rho is
    non-increasing)."""
    gaps = (rho[:-1] - rho[1:]).abs() <= TIE_GAP
    clusters, start = [], None
    for i, tied in enumerate(gaps.tolist()):
        if tied and start is None:
            start = i
        elif not tied and start is not None:
            clusters.append((start, i + 1))
            start = None
    if start is not None:
        clusters.append((start, rho.shape[0]))
    return clusters


def _pwcca_value(vectors: torch.Tensor, rho: torch.Tensor, sv: torch.Tensor) -> torch.Tensor:
    """sum alpha_i rho_i / sum alpha_i with alpha_i = sum_j |<h_i, x_j>| = |a_i^T S V^T|_1.
    vectors: [r, k] canonical weights a_i of the weight side in its basis; sv: [r, p].

    Within a cluster of tied correlations the variates are fixed as the principal axes of the
    units' projections onto the cluster's subspace (left singular vectors of A_c^T S V^T), a
    basis-independent choice, so the value does not depend on the solver's arbitrary basis."""
    k = rho.shape[0]
    projections = vectors[:, :k].T @ sv
    alpha = projections.abs().sum(dim=1)
    for start, stop in _tied_clusters(rho):
        _, values, right_h = torch.linalg.svd(projections[start:stop], full_matrices=False)
        alpha[start:stop] = (values[:, None] * right_h).abs().sum(dim=1)
    return (alpha * rho).sum() / alpha.sum()


def pwcca(blocks: torch.Tensor, pairs: Sequence[tuple[Sketch, Sketch]]
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """PWCCA of Morcos et al. for (a, b) and for (b, a): weights from the side with the lower
    rank, ties to the first argument. blocks: [B, ra, rb] -> ([B], [B])."""
    ra, rb = blocks.shape[-2:]
    # Only the lower-rank side supplies weights, so only its vectors are needed; ties
    # (equal ranks) need both sides, one for each argument order: one SVD gives both.
    left = right = None
    if ra == rb:
        left, rho, right_h = torch.linalg.svd(blocks)
        right = right_h.mT
    elif ra < rb:
        left, rho = side_vectors(blocks, left=True)
    else:
        right, rho = side_vectors(blocks, left=False)
    forward, backward = [], []
    for idx, (a, b) in enumerate(pairs):
        on_a = on_b = None
        if left is not None:
            on_a = _pwcca_value(left[idx], rho[idx], a.extras["sv"])
        if right is not None:
            on_b = _pwcca_value(right[idx], rho[idx], b.extras["sv"])
        forward.append(on_a if on_a is not None else on_b)
        backward.append(on_b if on_b is not None else on_a)
    return torch.stack(forward), torch.stack(backward)


def _google_value(vectors: torch.Tensor, rho: torch.Tensor, side: Sketch) -> torch.Tensor:
    """google/svcca compute_pwcca on one side, in the (rank + 1)-dim span of [U, 1].

    google rotates the centred units by the canonical directions u_i = V a_i without
    whitening and adds back the mean of unit i to direction i; its QR then orthonormalises
    these directions and weights them by |<q_i, raw unit j>|. vectors: [r, k]."""
    n = side.n
    k = rho.shape[0]
    s, sv, means = side.extras["s"], side.extras["sv"], side.extras["means"]
    # SVD signs are arbitrary and google's value depends on them: fix each direction so that
    # its unit-space vector V a_i sums to >= 0, whichever way the pair was passed.
    signs = torch.where(side.extras["unit_sum"] @ vectors >= 0, 1.0, -1.0)
    vectors = vectors * signs
    dirns = torch.cat([s[:, None] * vectors, n ** 0.5 * means[None, :k]])
    q, _ = torch.linalg.qr(dirns)
    raw = torch.cat([sv, n ** 0.5 * means[None, :]])
    weights = (q.T @ raw).abs().sum(dim=1)
    return (weights * rho).sum() / weights.sum()


def pwcca_google(blocks: torch.Tensor, pairs: Sequence[tuple[Sketch, Sketch]]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """google/svcca PWCCA for (a, b) and (b, a): weights from the side with fewer live units
    (google's rule), keeping min(ra, rb) coefficients. blocks: [B, ra, rb] -> ([B], [B])."""
    left, rho, right_h = torch.linalg.svd(blocks, full_matrices=False)
    forward, backward = [], []
    for idx, (a, b) in enumerate(pairs):
        on_a = _google_value(left[idx], rho[idx], a)
        on_b = _google_value(right_h[idx].T, rho[idx], b)
        forward.append(on_a if a.units <= b.units else on_b)
        backward.append(on_b if b.units <= a.units else on_a)
    return torch.stack(forward), torch.stack(backward)
