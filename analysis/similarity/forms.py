"""The CKA factor form: packed n x n Grams or stacked features, whichever costs fewer
multiply-adds for a set of pairs (only the linear kernels have the choice)."""

from __future__ import annotations

from typing import Sequence

from analysis.similarity.registry import get_measure, resolve_conv

# Above this many rows a packed n x n Gram per representation costs too much memory.
MAX_GRAM_ROWS = 6000
# The measures whose sketch may take either form; every other one uses "gram".
LINEAR_CKA = ("linear_cka", "linear_cka_debiased")


def cka_form(measure: str, shapes: Sequence[Sequence[int]], *, pairs: float | None = None,
             conv: str = "auto", max_rows: int | None = None) -> str:
    """"gram" (packed n x n Grams, one product per tile) or "features" (stacked features),
    whichever costs fewer multiply-adds for `pairs` pairs among representations of `shapes`
    (one shape per representation); None: many pairs per representation (the all-pairs
    limit). Above MAX_GRAM_ROWS rows a Gram costs too much memory. Only linear kernels have
    a choice: "gram" for every other measure."""
    info = get_measure(measure)
    if info.name not in LINEAR_CKA:
        return "gram"
    mode = resolve_conv(measure, conv)
    matrices = [_matrix_shape(shape, mode) for shape in shapes]
    rows = int(shapes[0][0]) * matrices[0][0]
    if mode == "spatial" and max_rows is not None:
        rows = min(rows, max_rows)
    if rows > MAX_GRAM_ROWS:
        return "features"
    count = len(matrices)
    mean_p = sum(m[1] for m in matrices) / count
    if pairs is None:
        return "gram" if rows * rows / 2 <= rows * mean_p * mean_p else "features"
    gram_cost = count * rows * rows * mean_p + pairs * rows * rows / 2
    feature_cost = (pairs + count) * rows * mean_p * mean_p
    return "gram" if gram_cost <= feature_cost else "features"


def _matrix_shape(shape: Sequence[int], mode: str) -> tuple[int, int]:
    """(rows per example, features) of `to_matrix` of a representation of `shape`, before
    any pooling or row stride."""
    if len(shape) == 2:
        return 1, int(shape[1])
    c, h, w = (int(d) for d in shape[1:])
    return {"flatten": (1, c * h * w), "avgpool": (1, c), "spatial": (h * w, c)}[mode]
