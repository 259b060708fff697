"""Singular values of batches of small blocks, the per-pair cost of the CCA family and NBS."""

from __future__ import annotations

import torch

# Eigenvalues of the Gram B^T B carry an absolute error of about eps * lambda_max, so
# sqrt(lambda_i) is accurate while lambda_i / lambda_max stays above this ratio (the error of
# sigma_i is then below ~1e-10 sigma_max); blocks with smaller eigenvalues fall back to an SVD.
GRAM_RATIO = 1e-12


def singular_values(blocks: torch.Tensor) -> torch.Tensor:
    """Singular values, non-increasing. blocks: [B, a, b] -> [B, min(a, b)].

    A symmetric eigensolver on the smaller Gram is about twice as fast as an SVD of the
    block; blocks whose spectrum reaches round-off (rank-deficient ones) use the SVD."""
    if blocks.shape[0] == 0 or min(blocks.shape[-2:]) == 0:
        return torch.linalg.svdvals(blocks)
    gram = (blocks.mT @ blocks if blocks.shape[-1] <= blocks.shape[-2]
            else blocks @ blocks.mT)
    eigenvalues = torch.linalg.eigvalsh(gram).flip(-1)
    top = eigenvalues[:, :1]
    resolved = (eigenvalues[:, -1:] > GRAM_RATIO * top).squeeze(-1) & (top.squeeze(-1) > 0)
    values = eigenvalues.clamp_min(0.0).sqrt()
    if not bool(resolved.all()):
        values[~resolved] = torch.linalg.svdvals(blocks[~resolved])
    return values


def side_vectors(blocks: torch.Tensor, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular vectors of one side and the singular values, non-increasing.

    blocks: [B, a, b]; left: the a-side (left singular vectors, [B, a, k]) or the b-side
    ([B, b, k]), k = min(a, b). Eigenvectors of that side's Gram cost a third of an SVD;
    blocks whose k-th eigenvalue reaches round-off use the SVD."""
    k = min(blocks.shape[-2:])
    gram = blocks @ blocks.mT if left else blocks.mT @ blocks
    eigenvalues, vectors = torch.linalg.eigh(gram)
    eigenvalues = eigenvalues.flip(-1)[:, :k]
    vectors = vectors.flip(-1)[:, :, :k]
    top = eigenvalues[:, 0]
    resolved = (eigenvalues[:, -1] > GRAM_RATIO * top) & (top > 0)
    values = eigenvalues.clamp_min(0.0).sqrt()
    if not bool(resolved.all()):
        u, s, vh = torch.linalg.svd(blocks[~resolved], full_matrices=False)
        vectors[~resolved] = u if left else vh.mT
        values[~resolved] = s
    return vectors, values
