"""CKA kernels: centred Gram matrices of one representation, packed so that a dot product of
two packed vectors is the Frobenius inner product <K, L> that HSIC needs."""

from __future__ import annotations

import warnings

import torch

# Below this RBF threshold the kernel tends to the identity in high dimension and every pair
# tends to CKA 1 (SIMILARITY.md).
RBF_WARN_BELOW = 0.3


def pack(gram: torch.Tensor) -> torch.Tensor:
    """A symmetric gram [n, n] as [n(n+1)/2] with off-diagonal entries times sqrt(2), so that
    pack(K) . pack(L) == sum_ij K_ij L_ij at half the memory and half the product cost."""
    n = gram.shape[0]
    rows, cols = torch.triu_indices(n, n, offset=1, device=gram.device)
    off = gram[rows, cols] * 2.0 ** 0.5
    return torch.cat([torch.diagonal(gram), off])


def u_centre(gram: torch.Tensor) -> torch.Tensor:
    """U-centring of Székely & Rizzo: <u_centre(K), u_centre(L)> = n(n-3) HSIC_unbiased(K, L)
    (Song et al. 2012). gram: [n, n] with n >= 4."""
    n = gram.shape[0]
    k = gram.clone()
    k.fill_diagonal_(0.0)
    sums = k.sum(dim=0)
    k -= (sums[:, None] + sums[None, :]) / (n - 2)
    k += sums.sum() / ((n - 1) * (n - 2))
    k.fill_diagonal_(0.0)
    return k


def _packed_upper(zc: torch.Tensor, adjust=None, block: int = 256) -> torch.Tensor:
    """A packing of adjust(Zc Zc^T) with the inner products of `pack`, computing only the
    row slabs on and right of the diagonal: about half the multiply-adds of the full Gram,
    which dominates the sketch cost, written straight into the result (no gathers).

    Slab k is rows [s, e) x columns [s, n): its leading [b, b] diagonal block is kept whole
    (each off-diagonal entry appears twice, as in the full Gram) and the rest is scaled by
    sqrt(2). zc: [n, p]; adjust(values, rows, cols), if given, maps a [b, m] slab of Gram
    entries to the kernel's entries, given its row and column index vectors."""
    n = zc.shape[0]
    starts = list(range(0, n, block))
    length = sum(min(block, n - s) * (n - s) for s in starts)
    out = zc.new_empty(length)
    offset = 0
    for start in starts:
        size = min(block, n - start)
        slab = out[offset:offset + size * (n - start)].view(size, n - start)
        torch.mm(zc[start:start + size], zc[start:].T, out=slab)
        if adjust is not None:
            slab.copy_(adjust(slab, torch.arange(start, start + size, device=zc.device),
                              torch.arange(start, n, device=zc.device)))
        slab[:, size:] *= 2.0 ** 0.5
        offset += slab.numel()
    return out


def linear_gram_vector(zc: torch.Tensor) -> torch.Tensor:
    """Packed centred linear Gram Zc Zc^T (same inner products as `pack`).
    zc: [n, p] column-centred."""
    return _packed_upper(zc)


def debiased_gram_vector(zc: torch.Tensor) -> torch.Tensor:
    """Packed U-centred linear Gram (unbiased HSIC). zc: [n, p] column-centred, n >= 4.

    Centred columns make every row of Zc Zc^T sum to 0, so the off-diagonal row sums of the
    U-centring are -||z_i||^2 and the U-centred entries are
    K_ij + (d_i + d_j) / (n - 2) - sum(d) / ((n - 1)(n - 2)), 0 on the diagonal."""
    n = zc.shape[0]
    d = (zc * zc).sum(dim=1)
    shift = d.sum() / ((n - 1) * (n - 2))

    def adjust(values, rows, cols):
        values = values + (d[rows, None] + d[None, cols]) / (n - 2) - shift
        return torch.where(rows[:, None] == cols[None, :], 0.0, values)
    return _packed_upper(zc, adjust)


def minibatch_vector(zc: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-batch packed U-centred Grams of consecutive rows, each scaled by 1/sqrt(n_b(n_b-3))
    so that the dot product of two such vectors is sum_b HSIC_1(K_b, L_b) (Nguyen et al.
    2021). A final batch with fewer than 4 rows is dropped (HSIC_1 needs 4).
    zc: [n, p]; HSIC_1 is translation invariant, so global centring is harmless."""
    parts = []
    for start in range(0, zc.shape[0], batch_size):
        rows = zc[start:start + batch_size]
        m = rows.shape[0]
        if m >= 4:
            parts.append(pack(u_centre(rows @ rows.T)) / (m * (m - 3)) ** 0.5)
    return torch.cat(parts) if parts else zc.new_zeros(0)


def numpy_median(values: torch.Tensor) -> torch.Tensor:
    """Median of all entries as numpy computes it (mean of the two middle ones if even)."""
    flat = values.reshape(-1)
    count = flat.numel()
    upper = torch.kthvalue(flat, count // 2 + 1).values
    if count % 2:
        return upper
    return (torch.kthvalue(flat, count // 2).values + upper) / 2


def squared_distances(zc: torch.Tensor) -> torch.Tensor:
    """[n, n] squared Euclidean distances between rows, non-negative, zero diagonal."""
    sq = (zc * zc).sum(dim=1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * (zc @ zc.T)).clamp_min_(0.0)
    dist.fill_diagonal_(0.0)
    return dist


def rbf_gram_vector(zc: torch.Tensor, threshold: float) -> torch.Tensor | None:
    """Packed double-centred RBF Gram, sigma^2 = threshold^2 * median of all n^2 squared
    distances (Kornblith et al.'s gram_rbf). None when the median is 0 (zero bandwidth)."""
    dist = squared_distances(zc)
    median = numpy_median(dist)
    if not bool(median > 0):
        return None
    gram = torch.exp(dist / (-2.0 * threshold ** 2 * median))
    col = gram.mean(dim=0)
    gram -= col[:, None] + col[None, :]
    gram += col.mean()
    return pack(gram)


def warn_rbf_threshold(threshold: float) -> None:
    if threshold < RBF_WARN_BELOW:
        warnings.warn(f"rbf_cka threshold={threshold} < {RBF_WARN_BELOW}: the kernel tends "
                      "to the identity in high dimension and every pair tends to 1",
                      UserWarning, stacklevel=4)


def debiased_from_products(xty_sq: torch.Tensor, rows_dot: torch.Tensor, *,
                           sq_a: torch.Tensor, sq_b: torch.Tensor, n: int) -> torch.Tensor:
    """n(n-3) HSIC_unbiased from features (Kornblith et al.'s debiased helper), batched.

    xty_sq: [a, b] ||Xa^T Xb||_F^2; rows_dot: [a, b] dot products of the row squared-norm
    vectors; sq_a: [a], sq_b: [b] squared Frobenius norms."""
    return (xty_sq - n / (n - 2.0) * rows_dot
            + sq_a[:, None] * sq_b[None, :] / ((n - 1.0) * (n - 2.0)))
