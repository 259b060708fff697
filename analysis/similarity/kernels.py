"""Batched tile kernels: all pairs of two lists of sketches, by stacked matrix products and
small per-pair decompositions batched by shape. No exception escapes for a bad pair: its
value is NaN and its status says why."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from analysis.similarity import cca, cka, nbs
from analysis.similarity.parallel import map_chunks
from analysis.similarity.registry import MeasureInfo
from analysis.similarity.sketch import Sketch

# float64 elements per stacked operand of one tile (1 GiB); bounds memory, not results.
TILE_ELEMENTS = 1 << 27
# Columns per stacked factor: small enough that skipping the lower tiles of a symmetric
# product saves most of its half, large enough for efficient matrix products.
TILE_COLUMNS = 2048


@dataclass(frozen=True)
class BlockValues:
    """The evaluated values of one block of pairs (rows[i], cols[j]): `forward` holds
    value(rows[i], cols[j]), `backward` value(cols[j], rows[i]) (it differs from `forward`
    only for the order-dependent PWCCAs), `status` "ok" or why a pair is null.
    forward, backward: [M, N] float64; status: [M, N] str."""

    forward: torch.Tensor
    backward: torch.Tensor
    status: np.ndarray


def _status_grid(info: MeasureInfo, rows: Sequence[Sketch], cols: Sequence[Sketch]
                 ) -> np.ndarray:
    row_status = np.array([s.status for s in rows], dtype="<U16")[:, None]
    col_status = np.array([s.status for s in cols], dtype="<U16")[None, :]
    status = np.where(row_status != "ok", row_status, col_status)
    if info.family == "cca":
        key = "dim" if info.name == "svcca" else "rank"
        row_dim = np.array([getattr(s, key) for s in rows])[:, None]
        col_dim = np.array([getattr(s, key) for s in cols])[None, :]
        degenerate = np.maximum(row_dim, col_dim) >= rows[0].n - 1
        status = np.where((status == "ok") & degenerate, "degenerate", status)
    return status


def _chunks(indices: Sequence[int], sizes: Sequence[int], cap: int) -> Iterator[list[int]]:
    """Consecutive groups of `indices` whose `sizes` sum to at most `cap` (at least one)."""
    chunk: list[int] = []
    total = 0
    for index in indices:
        if chunk and total + sizes[index] > cap:
            yield chunk
            chunk, total = [], 0
        chunk.append(index)
        total += sizes[index]
    if chunk:
        yield chunk


def _size(sketch: Sketch, packed: bool) -> int:
    if sketch.factor is None:
        return 0
    return sketch.factor.numel() if packed else sketch.dim


def _product(a: torch.Tensor, b: torch.Tensor, precision: str) -> torch.Tensor:
    """a b^T, in fp32 (TF32 where the backend allows it) for precision="fast"."""
    if precision == "fast":
        return (a.float() @ b.float().T).double()
    return a @ b.T


def _stack(sketches: Sequence[Sketch], chunk: Sequence[int]) -> torch.Tensor:
    """The chunk's factors as rows: packed Grams [chunk, L], or [sum of dims, n] (a
    transposed view: matrix products read it without a copy)."""
    factors = [sketches[i].factor for i in chunk]
    if factors[0].ndim == 1:
        return torch.stack(factors)
    return torch.cat(factors, dim=1).T


def _tile_pairs(rows_chunk: Sequence[int], cols_chunk: Sequence[int], ok: np.ndarray,
                same: bool) -> list[tuple[int, int]]:
    return [(i, j) for i in rows_chunk for j in cols_chunk
            if ok[i, j] and (not same or j >= i)]


def evaluate(info: MeasureInfo, options: Mapping[str, Any], *, rows: Sequence[Sketch],
             cols: Sequence[Sketch], same: bool, precision: str) -> BlockValues:
    """All pairs of `rows` x `cols` (`same`: cols is rows, only i <= j is computed)."""
    status = _status_grid(info, rows, cols)
    ok = status == "ok"
    forward = torch.full((len(rows), len(cols)), float("nan"), dtype=torch.float64)
    backward = forward.clone()
    live_rows = [i for i in range(len(rows)) if ok[i].any()]
    live_cols = [j for j in range(len(cols)) if ok[:, j].any()]
    if not live_rows:
        return BlockValues(forward, backward, status)
    n = rows[live_rows[0]].n
    packed = rows[live_rows[0]].factor.ndim == 1
    row_sizes = [_size(s, packed) for s in rows]
    col_sizes = [_size(s, packed) for s in cols]
    cap = TILE_ELEMENTS if packed else max(1, min(TILE_ELEMENTS // (4 * n), TILE_COLUMNS))
    col_chunks = list(_chunks(live_cols, col_sizes, cap))
    for rows_chunk in _chunks(live_rows, row_sizes, cap):
        left = _stack(rows, rows_chunk)
        for cols_chunk in col_chunks:
            if same and cols_chunk[-1] < rows_chunk[0]:
                continue
            right = left if same and cols_chunk == rows_chunk else _stack(cols, cols_chunk)
            product = _product(left, right, precision)
            if info.family == "cka":
                _cka_tile(info, rows, cols, rows_chunk, cols_chunk, product, forward)
            else:
                pairs = _tile_pairs(rows_chunk, cols_chunk, ok, same)
                _pair_tile(info, options, rows, cols, rows_chunk, cols_chunk, product,
                           pairs, forward, backward)
    if info.family == "cka":
        forward = torch.where(torch.from_numpy(ok), forward, float("nan"))
        backward = forward.clone()
    else:
        failed = ok & np.isnan(forward.numpy())
        if same:  # only the upper triangle was computed
            failed = np.triu(failed) | np.triu(failed).T
        status = np.where(failed, "linalg_error", status)
    if same:
        upper = torch.triu(torch.ones_like(forward, dtype=torch.bool))
        forward = torch.where(upper, forward, backward.T)
        backward = forward.T.clone()
    return BlockValues(forward, backward, status)


def _floats(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, device=device)


def _segments(sketches: Sequence[Sketch], chunk: Sequence[int]) -> torch.Tensor:
    dims = torch.tensor([sketches[i].dim for i in chunk])
    return torch.repeat_interleave(torch.arange(len(chunk)), dims)


def _cka_tile(info: MeasureInfo, rows: Sequence[Sketch], cols: Sequence[Sketch],
              rows_chunk: list[int], cols_chunk: list[int], product: torch.Tensor,
              out: torch.Tensor) -> None:
    """CKA for a tile: `product` is either <K_i, L_j> (packed Grams) or the stacked feature
    cross-products Xc_i^T Xc_j, reduced here to ||Xc_i^T Xc_j||_F^2 per pair."""
    device = product.device
    if rows[rows_chunk[0]].factor.ndim == 2:
        seg_r = _segments(rows, rows_chunk).to(device)
        seg_c = _segments(cols, cols_chunk).to(device)
        squared = product * product
        by_row = squared.new_zeros(len(rows_chunk), squared.shape[1]).index_add_(0, seg_r, squared)
        product = by_row.new_zeros(len(rows_chunk), len(cols_chunk)).index_add_(1, seg_c, by_row)
        if info.name == "linear_cka_debiased":
            rows_r = torch.stack([rows[i].extras["rows"] for i in rows_chunk])
            rows_c = torch.stack([cols[j].extras["rows"] for j in cols_chunk])
            sq_r = _floats([rows[i].extras["sq"] for i in rows_chunk], device)
            sq_c = _floats([cols[j].extras["sq"] for j in cols_chunk], device)
            product = cka.debiased_from_products(product, rows_r @ rows_c.T, sq_a=sq_r,
                                                 sq_b=sq_c, n=rows[rows_chunk[0]].n)
    norm_r = _floats([rows[i].norm for i in rows_chunk], device)
    norm_c = _floats([cols[j].norm for j in cols_chunk], device)
    values = product / (norm_r[:, None] * norm_c[None, :])
    if info.clipped:
        values = values.clamp(*info.range)
    out[np.ix_(rows_chunk, cols_chunk)] = values.cpu()


def _pair_tile(info: MeasureInfo, options: Mapping[str, Any], rows: Sequence[Sketch],
               cols: Sequence[Sketch], rows_chunk: list[int], cols_chunk: list[int],
               product: torch.Tensor, pairs: list[tuple[int, int]], forward: torch.Tensor,
               backward: torch.Tensor) -> None:
    """CCA family and NBS: slice each pair's block, batch the blocks by shape."""
    row_at = np.cumsum([0] + [rows[i].dim for i in rows_chunk])
    col_at = np.cumsum([0] + [cols[j].dim for j in cols_chunk])
    row_pos = {i: k for k, i in enumerate(rows_chunk)}
    col_pos = {j: k for k, j in enumerate(cols_chunk)}
    groups: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for i, j in pairs:
        groups[(rows[i].dim, cols[j].dim)].append((i, j))
    for group in groups.values():
        blocks = torch.stack([
            product[row_at[row_pos[i]]:row_at[row_pos[i] + 1],
                    col_at[col_pos[j]]:col_at[col_pos[j] + 1]] for i, j in group])
        sides = [(rows[i], cols[j]) for i, j in group]
        parts = map_chunks(lambda a, b: _guarded(info, options, blocks[a:b], sides[a:b]),
                           len(group), device=blocks.device)
        fwd = torch.cat([part[0] for part in parts])
        bwd = torch.cat([part[1] for part in parts])
        index = tuple(torch.tensor(axis) for axis in zip(*group))
        forward[index] = fwd.cpu()
        backward[index] = bwd.cpu()


def _guarded(info: MeasureInfo, options: Mapping[str, Any], blocks: torch.Tensor,
             sides: Sequence[tuple[Sketch, Sketch]]) -> tuple[torch.Tensor, torch.Tensor]:
    """pair_values, retried pair by pair if a decomposition fails to converge; a pair that
    still fails is NaN (status "linalg_error") rather than an exception out of the batch."""
    try:
        return pair_values(info, options, blocks=blocks, sides=sides)
    except torch.linalg.LinAlgError:
        values = []
        for k in range(blocks.shape[0]):
            try:
                values.append(pair_values(info, options, blocks=blocks[k:k + 1],
                                          sides=sides[k:k + 1]))
            except torch.linalg.LinAlgError:
                nan = blocks.new_full((1,), float("nan"))
                values.append((nan, nan))
        return torch.cat([v[0] for v in values]), torch.cat([v[1] for v in values])


def pair_values(info: MeasureInfo, options: Mapping[str, Any], *, blocks: torch.Tensor,
                sides: Sequence[tuple[Sketch, Sketch]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(value(a, b), value(b, a)) for a batch of same-shape blocks [B, da, db]."""
    name = info.name
    if name in ("mean_cca", "svcca"):
        values = cca.mean_cca(blocks, options if name == "mean_cca" else {})
    elif name == "mean_cca_sq":
        values = cca.mean_cca_sq(blocks)
    elif name == "pwcca":
        fwd, bwd = cca.pwcca(blocks, sides)
        return fwd.clamp(0.0, 1.0), bwd.clamp(0.0, 1.0)
    elif name == "pwcca_google":
        fwd, bwd = cca.pwcca_google(blocks, sides)
        return fwd.clamp(0.0, 1.0), bwd.clamp(0.0, 1.0)
    else:
        device = blocks.device
        norms_a = _floats([a.norm for a, _ in sides], device)
        norms_b = _floats([b.norm for _, b in sides], device)
        values = nbs.nbs(blocks, norms_a=norms_a, norms_b=norms_b)
        if name == "procrustes":
            values = nbs.procrustes(values, factors=[(a.factor, b.factor) for a, b in sides])
    if info.clipped and name != "procrustes":
        values = values.clamp(*info.range)
    return values, values
