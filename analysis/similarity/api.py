"""The public entry points: `similarity` of one pair and `pairwise` over all pairs."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from analysis.similarity import cka
from analysis.similarity.inputs import (as_tensor, as_tensors, check_examples, common_size,
                                        spatial_size, to_matrix)
from analysis.similarity.kernels import Tile, evaluate
from analysis.similarity.registry import (PRECISIONS, TOLERANCE, MeasureInfo, get_measure,
                                          resolve_conv, resolve_options)
from analysis.similarity.sketch import Sketch, build_sketch

# Above this many rows a packed n x n Gram per representation costs too much memory.
MAX_GRAM_ROWS = 6000


@dataclass(frozen=True)
class PairwiseResult:
    """All pairs of one measure.

    values: [M, N] float64 (CPU), NaN where null; status: [M, N] str array ("ok",
    "degenerate", "constant", "too_few_rows", "zero_bandwidth"); a_dim, b_dim: [M, N]
    effective dimensions of each side for the CCA family (rank, or the reduced dimension for
    svcca), -1 elsewhere; conv: the concrete conv mode; options: every option used, defaults
    included; tolerance: the stated agreement with a float64 reference."""

    values: torch.Tensor
    status: np.ndarray
    measure: str = "linear_cka"
    conv: str = "flatten"
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    precision: str = "exact"
    tolerance: float = TOLERANCE["exact"]
    a_dim: np.ndarray | None = None
    b_dim: np.ndarray | None = None


def similarity(x: Any, y: Any, measure: str = "linear_cka", *, conv: str = "auto",
               **options: Any) -> float:
    """The value of `measure` for one pair; NaN when it is null (see `pairwise` for why).

    x: [n, p] or [n, c, h, w]; y: [n, q] or [n, d, h', w'] (tensors or arrays)."""
    result = pairwise([x], [y], measure=measure, conv=conv, **options)
    return float(result.values[0, 0])


def _device(device: Any) -> torch.device:
    try:
        return torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"invalid device {device!r}; expected None, 'cpu', 'cuda' or "
                         "'cuda:<index>'") from error


def _check_call(measure: str, conv: str, precision: str, options: Mapping[str, Any]
                ) -> tuple[MeasureInfo, str, dict[str, Any]]:
    info = get_measure(measure)
    mode = resolve_conv(measure, conv)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}")
    merged = resolve_options(measure, options)
    if measure == "rbf_cka":
        cka.warn_rbf_threshold(merged["threshold"])
    return info, mode, merged


def pairwise(xs: Sequence[Any], ys: Sequence[Any] | None = None, *,
             measure: str = "linear_cka", conv: str = "auto", device: Any = None,
             precision: str = "exact", **options: Any) -> PairwiseResult:
    """`measure` for every pair (xs[i], ys[j]), or (xs[i], xs[j]) when ys is None.

    xs, ys: sequences of representations of the same n probe examples, each [n, p] or
    [n, c, h, w] (tensors or arrays). Each representation is sketched once; tiles of pairs
    are evaluated with batched kernels in float64 on `device` (CPU by default), or with fp32
    products for precision="fast" (tolerance 1e-4). Undefined values are NaN with the reason
    in `status`; bad arguments raise ValueError."""
    info, mode, merged = _check_call(measure, conv, precision, options)
    dev = _device(device)
    left = as_tensors(xs, "xs", dev)
    right = left if ys is None else as_tensors(ys, "ys", dev)
    check_examples([("xs", left)] + ([] if ys is None else [("ys", right)]))
    same = ys is None
    grids = _Grids.empty((len(left), len(right)))
    form = _cka_form(info, left, right, mode, same, merged["max_rows"])
    cache: dict[tuple[str, int, Any], Sketch] = {}

    def sketch_of(side: str, index: int, target: Any) -> Sketch:
        key = ("x" if same else side, index, target)
        if key not in cache:
            tensors = left if side == "x" or same else right
            z = to_matrix(tensors[index], mode, target, merged["max_rows"])
            cache[key] = build_sketch(z, info, merged, form)
        return cache[key]

    for rows_idx, cols_idx, target, block_same in _blocks(left, right, mode, same):
        rows = [sketch_of("x", i, target) for i in rows_idx]
        cols = [sketch_of("y", j, target) for j in cols_idx]
        tile = evaluate(info, merged, rows, cols, same=block_same, precision=precision)
        dims = (np.array([s.dim for s in rows]), np.array([s.dim for s in cols]))
        grids.place(tile, rows_idx, cols_idx, dims if info.family == "cca" else None,
                    mirror=same and not block_same)
    return PairwiseResult(values=grids.values, status=grids.status, measure=measure,
                          conv=mode, options=MappingProxyType(merged), precision=precision,
                          tolerance=TOLERANCE[precision], a_dim=grids.a_dim,
                          b_dim=grids.b_dim)


@dataclass(frozen=True)
class _Grids:
    """The [M, N] outputs of `pairwise`, filled block by block."""

    values: torch.Tensor
    status: np.ndarray
    a_dim: np.ndarray
    b_dim: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> "_Grids":
        return cls(values=torch.full(shape, float("nan"), dtype=torch.float64),
                   status=np.full(shape, "ok", dtype="<U16"), a_dim=np.full(shape, -1),
                   b_dim=np.full(shape, -1))

    def place(self, tile: Tile, rows_idx: list[int], cols_idx: list[int],
              dims: tuple[np.ndarray, np.ndarray] | None, *, mirror: bool) -> None:
        """Write a block; `mirror` also writes its transpose (pairs (cols, rows))."""
        grid, flipped = np.ix_(rows_idx, cols_idx), np.ix_(cols_idx, rows_idx)
        self.values[grid] = tile.forward
        self.status[grid] = tile.status
        if dims is not None:
            self.a_dim[grid] = dims[0][:, None]
            self.b_dim[grid] = dims[1][None, :]
        if mirror:
            self.values[flipped] = tile.backward.T
            self.status[flipped] = tile.status.T
            self.a_dim[flipped] = self.b_dim[grid].T
            self.b_dim[flipped] = self.a_dim[grid].T


def _blocks(left: Sequence[torch.Tensor], right: Sequence[torch.Tensor], mode: str,
            same: bool) -> list[tuple[list[int], list[int], Any, bool]]:
    """Blocks of pairs sharing one reduction: in `spatial` mode, pairs of layers with
    different h x w are pooled to the smaller size, so rows are grouped by spatial size."""
    if mode != "spatial":
        return [(list(range(len(left))), list(range(len(right))), None, same)]
    by_left: dict[tuple[int, int], list[int]] = {}
    by_right: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(left):
        by_left.setdefault(spatial_size(x), []).append(i)
    for j, y in enumerate(right):
        by_right.setdefault(spatial_size(y), []).append(j)
    blocks = []
    sizes_left, sizes_right = list(by_left), list(by_right)
    for a, size_a in enumerate(sizes_left):
        for b, size_b in enumerate(sizes_right):
            if same and b < a:
                continue
            block_same = same and a == b
            blocks.append((by_left[size_a], by_right[size_b], common_size(size_a, size_b),
                           block_same))
    return blocks


def _cka_form(info: MeasureInfo, left: Sequence[torch.Tensor],
              right: Sequence[torch.Tensor], mode: str, same: bool,
              max_rows: int | None) -> str:
    """Gram form (packed n x n Grams, one product per tile) or feature form (stacked
    features), whichever costs fewer multiply-adds; only linear kernels have a choice."""
    if info.name not in ("linear_cka", "linear_cka_debiased"):
        return "gram"
    tensors = list(left) if same else list(left) + list(right)
    # Reducing two examples gives the rows per example (h*w in spatial mode) and features.
    shapes = [to_matrix(t[:2], mode).shape for t in tensors]
    rows = left[0].shape[0] * (shapes[0][0] // 2)
    if mode == "spatial" and max_rows is not None:
        rows = min(rows, max_rows)
    if rows > MAX_GRAM_ROWS:
        return "features"
    count = len(tensors)
    pairs = count * (count + 1) / 2 if same else len(left) * len(right)
    mean_p = sum(s[1] for s in shapes) / count
    gram_cost = count * rows * rows * mean_p + pairs * rows * rows / 2
    feature_cost = (pairs + count) * rows * mean_p * mean_p
    return "gram" if gram_cost <= feature_cost else "features"
