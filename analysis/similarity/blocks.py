"""The block planner of `pairwise`: which blocks of pairs are evaluated together, and the
[M, N] grids their values are written into, block by block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from analysis.similarity.inputs import common_size, spatial_size
from analysis.similarity.kernels import BlockValues

# Evaluate the whole rectangle once the connected blocks would cover this much of it: one
# batched call then costs about what the blocks do, with fewer, larger products.
DENSE_FILL = 0.5


def asked_grid(pairs: Sequence[tuple[int, int]] | None, shape: tuple[int, int]) -> np.ndarray:
    """[m, n] bool grid of the pairs asked for (all of them when pairs is None), for
    shape = (m, n); ValueError naming the first pair out of range."""
    m, n = shape
    if pairs is None:
        return np.ones((m, n), dtype=bool)
    grid = np.zeros((m, n), dtype=bool)
    for k, pair in enumerate(pairs):
        i, j = (int(v) for v in pair)
        if not (0 <= i < m and 0 <= j < n):
            raise ValueError(f"pairs[{k}] = {tuple(pair)} is out of range; expected indices "
                             f"below ({m}, {n})")
        grid[i, j] = True
    return grid


def cover(asked: np.ndarray, *, same: bool) -> list[tuple[list[int], list[int], bool]]:
    """Blocks (rows, cols, symmetric) whose evaluation covers every asked pair: the connected
    components of the bipartite pair graph (of the one-sided graph when `same`), or the whole
    grid when the components fill more than DENSE_FILL of it. asked: [m, n] bool."""
    m, n = asked.shape
    if asked.all():
        return [(list(range(m)), list(range(n)), same)]
    parent = list(range(m if same else m + n))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in zip(*np.nonzero(asked)):
        parent[root(int(i))] = root(int(j) if same else m + int(j))
    members: dict[int, tuple[list[int], list[int]]] = {}
    for i, j in zip(*np.nonzero(asked)):
        block = members.setdefault(root(int(i)), ([], []))
        block[0].append(int(i))
        block[1].append(int(j))
    blocks = []
    for rows, cols in members.values():
        if same:
            both = sorted(set(rows) | set(cols))
            blocks.append((both, both, True))
        else:
            blocks.append((sorted(set(rows)), sorted(set(cols)), False))
    cells = sum(len(r) * (len(r) + 1) / 2 if s else len(r) * len(c) for r, c, s in blocks)
    whole = m * (m + 1) / 2 if same else m * n
    if cells > DENSE_FILL * whole:
        rows = sorted({i for r, _, _ in blocks for i in r})
        cols = rows if same else sorted({j for _, c, _ in blocks for j in c})
        return [(rows, cols, same)]
    return blocks


def spatial_blocks(left: Sequence[torch.Tensor], right: Sequence[torch.Tensor], *, mode: str,
                   same: bool) -> list[tuple[list[int], list[int], Any, bool]]:
    """Blocks (rows, cols, target, symmetric) of pairs sharing one reduction: in `spatial`
    mode, pairs of layers with different h x w are pooled to the smaller size (target), so
    rows are grouped by spatial size; any other mode is one block with target None."""
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


@dataclass(frozen=True)
class Grids:
    """The [M, N] outputs of `pairwise`, filled block by block: values float64 (NaN until
    written), status str, a_dim and b_dim int (-1 until written)."""

    values: torch.Tensor
    status: np.ndarray
    a_dim: np.ndarray
    b_dim: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> "Grids":
        """Grids of `shape` (M, N) with nothing written yet."""
        return cls(values=torch.full(shape, float("nan"), dtype=torch.float64),
                   status=np.full(shape, "ok", dtype="<U16"), a_dim=np.full(shape, -1),
                   b_dim=np.full(shape, -1))

    def place(self, block: BlockValues, *, rows_idx: list[int], cols_idx: list[int],
              dims: tuple[np.ndarray, np.ndarray] | None, mirror: bool) -> None:
        """Write a block at (rows_idx, cols_idx), with each side's dimensions ([rows], [cols])
        unless dims is None; `mirror` also writes its transpose (pairs (cols, rows))."""
        grid, flipped = np.ix_(rows_idx, cols_idx), np.ix_(cols_idx, rows_idx)
        self.values[grid] = block.forward
        self.status[grid] = block.status
        if dims is not None:
            self.a_dim[grid] = dims[0][:, None]
            self.b_dim[grid] = dims[1][None, :]
        if mirror:
            self.values[flipped] = block.backward.T
            self.status[flipped] = block.status.T
            self.a_dim[flipped] = self.b_dim[grid].T
            self.b_dim[flipped] = self.a_dim[grid].T

    def skip(self, where: np.ndarray) -> None:
        """Mark pairs that were not asked for: NaN, status "skipped", no dimensions.
        where: [M, N] bool."""
        self.values[torch.from_numpy(where)] = float("nan")
        self.status[where] = "skipped"
        self.a_dim[where] = -1
        self.b_dim[where] = -1
