"""The public entry points: `similarity` of one pair, `pairwise` over all pairs, and the two
halves of `pairwise` for callers that keep sketches between calls: `sketch_spec` and `sketch`
build one representation's sketch, `pairwise_sketches` evaluates pairs of given sketches."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from analysis.similarity import cka
from analysis.similarity.blocks import Grids, asked_grid, cover, spatial_blocks
from analysis.similarity.forms import LINEAR_CKA, cka_form
from analysis.similarity.inputs import (as_sketches, as_tensor, as_tensors, check_examples,
                                        check_sketches, to_matrix)
from analysis.similarity.kernels import evaluate
from analysis.similarity.registry import (PRECISIONS, TOLERANCE, MeasureInfo, get_measure,
                                          resolve_conv, resolve_options)
from analysis.similarity.sketch import (SKETCH_OPTIONS, Sketch, base_sketch, measure_view,
                                        sketch_kind)


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


def similarity(x: Any, y: Any, *, measure: str = "linear_cka", conv: str = "auto",
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
    left = as_tensors(xs, name="xs", device=dev)
    right = left if ys is None else as_tensors(ys, name="ys", device=dev)
    check_examples([("xs", left)] + ([] if ys is None else [("ys", right)]))
    same = ys is None
    grids = Grids.empty((len(left), len(right)))
    form = _cka_form(info, left, right, mode, same, merged["max_rows"])
    kind = sketch_kind(info)
    cache: dict[tuple[str, int, Any], Sketch] = {}

    def sketch_of(side: str, index: int, target: Any) -> Sketch:
        key = ("x" if same else side, index, target)
        if key not in cache:
            tensors = left if side == "x" or same else right
            z = to_matrix(tensors[index], mode, target=target, max_rows=merged["max_rows"])
            base = base_sketch(z, kind, options=merged, form=form)
            cache[key] = measure_view(base, info, options=merged)
        return cache[key]

    blocks = spatial_blocks(left, right, mode=mode, same=same)
    for rows_idx, cols_idx, target, block_same in blocks:
        rows = [sketch_of("x", i, target) for i in rows_idx]
        cols = [sketch_of("y", j, target) for j in cols_idx]
        _place_block(grids, info, merged, rows, cols, rows_idx, cols_idx, block_same,
                     same and not block_same, precision)
    return _result(grids, measure, mode, merged, precision)


@dataclass(frozen=True)
class SketchSpec:
    """What decides one representation's sketch besides its values, hence the key a stored
    sketch is filed under (`key`). Build it with `sketch_spec`.

    kind: `sketch_kind` of the measure ("cca", "nbs" or a CKA measure); conv: the concrete
    conv mode; target: (h, w) a conv map is average-pooled to in `spatial` mode, None for its
    own size (and for 2-D representations); form: "basis" (CCA), "factor" (NBS), "gram" or
    "features" (CKA); options: the options that change the sketch (max_rows, and the RBF
    threshold or the minibatch size)."""

    kind: str
    conv: str
    target: tuple[int, int] | None
    form: str
    options: Mapping[str, Any]

    @property
    def key(self) -> str:
        """A stable file-name-safe key: readable fields, then a digest of all of them."""
        ident = json.dumps({"kind": self.kind, "conv": self.conv, "target": self.target,
                            "form": self.form, "options": dict(self.options), "version": 1},
                           sort_keys=True)
        size = "own" if self.target is None else f"{self.target[0]}x{self.target[1]}"
        digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
        return f"{self.kind}-{self.conv}-{size}-{self.form}-{digest}"


def sketch_spec(measure: str, shape: Sequence[int], *, conv: str = "auto",
                target: tuple[int, int] | None = None, form: str | None = None,
                **options: Any) -> SketchSpec:
    """The sketch `measure` needs of a representation of `shape` ([n, p] or [n, c, h, w]).

    target: in `spatial` mode, the (h, w) the pair's other side forces (the smaller of the two
    sizes, as `pairwise` pools); None or the representation's own size for no pooling.
    form: for linear_cka and linear_cka_debiased, "gram" or "features" (see `cka_form`);
    None picks `cka_form(measure, [shape])`. Options are the measure's (checked as in
    `pairwise`); only those that change the sketch enter the spec."""
    info, mode, merged = _check_call(measure, conv, "exact", options)
    if len(shape) not in (2, 4) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"shape {tuple(shape)!r} is not [n, p] or [n, c, h, w] of positive "
                         "integers")
    own = (int(shape[2]), int(shape[3])) if len(shape) == 4 else None
    if target is not None:
        target = (int(target[0]), int(target[1]))
        if own is not None and (target[0] > own[0] or target[1] > own[1]):
            raise ValueError(f"target {target} is larger than the representation's spatial "
                             f"size {own}; expected at most {own}")
    if mode != "spatial" or own is None or target == own:
        target = None
    kind = sketch_kind(info)
    choices = {"cca": ("basis",), "nbs": ("factor",)}.get(
        info.family, ("gram", "features") if info.name in LINEAR_CKA else ("gram",))
    if form is None:
        form = cka_form(measure, [shape], conv=mode, max_rows=merged["max_rows"]) \
            if len(choices) > 1 else choices[0]
    if form not in choices:
        raise ValueError(f"invalid form {form!r} for measure {measure!r}; expected one of "
                         f"{list(choices)}")
    kept = {"max_rows": merged["max_rows"], **{k: merged[k] for k in SKETCH_OPTIONS.get(kind, ())}}
    return SketchSpec(kind=kind, conv=mode, target=target, form=form,
                      options=MappingProxyType(kept))


def sketch(x: Any, spec: SketchSpec, *, device: Any = None) -> Sketch:
    """The sketch of one representation x ([n, p] or [n, c, h, w], tensor or array) under
    `spec`, in float64 on `device`; what `pairwise` computes once per representation."""
    t = as_tensor(x, name="x", device=_device(device))
    if spec.target is not None and t.ndim == 4 and (
            spec.target[0] > t.shape[2] or spec.target[1] > t.shape[3]):
        raise ValueError(f"x has spatial size {tuple(t.shape[2:])}, smaller than the spec's "
                         f"target {spec.target}; build the spec from x's shape")
    form = "gram" if spec.form in ("basis", "factor") else spec.form
    z = to_matrix(t, spec.conv, target=spec.target, max_rows=spec.options.get("max_rows"))
    return base_sketch(z, spec.kind, options=spec.options, form=form)


def pairwise_sketches(rows: Sequence[Sketch], cols: Sequence[Sketch] | None = None, *,
                      measure: str = "linear_cka", conv: str = "auto",
                      pairs: Sequence[tuple[int, int]] | None = None,
                      precision: str = "exact", **options: Any) -> PairwiseResult:
    """`measure` for pairs of sketches from `sketch` (one `SketchSpec` form and target, the
    kind `measure` needs): every (rows[i], cols[j]), or (rows[i], rows[j]) when cols is None,
    or only `pairs` [(i, j), ...], whose other entries are NaN with status "skipped".

    Given the same sketches, the values equal `pairwise`'s. With `pairs`, only the connected
    blocks of the pair graph are evaluated (a sparse pair list, e.g. each checkpoint with its
    own dense network, costs its pairs, not the whole rectangle). conv is only recorded."""
    info, mode, merged = _check_call(measure, conv, precision, options)
    same = cols is None
    left = as_sketches(rows, name="rows", info=info)
    right = left if same else as_sketches(cols, name="cols", info=info)
    check_sketches(left + ([] if same else right))
    left = [measure_view(s, info, options=merged) for s in left]
    right = left if same else [measure_view(s, info, options=merged) for s in right]
    grids = Grids.empty((len(left), len(right)))
    asked = asked_grid(pairs, (len(left), len(right)))
    for rows_idx, cols_idx, block_same in cover(asked, same=same):
        _place_block(grids, info, merged, [left[i] for i in rows_idx],
                     [right[j] for j in cols_idx], rows_idx, cols_idx, block_same, False,
                     precision)
    if pairs is not None:
        grids.skip(~asked)
    return _result(grids, measure, mode, merged, precision)


def _place_block(grids: Grids, info: MeasureInfo, merged: Mapping[str, Any],
                 rows: Sequence[Sketch], cols: Sequence[Sketch], rows_idx: list[int],
                 cols_idx: list[int], block_same: bool, mirror: bool, precision: str) -> None:
    block = evaluate(info, merged, rows=rows, cols=cols, same=block_same, precision=precision)
    dims = (np.array([s.dim for s in rows]), np.array([s.dim for s in cols]))
    grids.place(block, rows_idx=rows_idx, cols_idx=cols_idx,
                dims=dims if info.family == "cca" else None, mirror=mirror)


def _result(grids: Grids, measure: str, mode: str, merged: Mapping[str, Any],
            precision: str) -> PairwiseResult:
    return PairwiseResult(values=grids.values, status=grids.status, measure=measure,
                          conv=mode, options=MappingProxyType(dict(merged)),
                          precision=precision, tolerance=TOLERANCE[precision],
                          a_dim=grids.a_dim, b_dim=grids.b_dim)


def _cka_form(info: MeasureInfo, left: Sequence[torch.Tensor],
              right: Sequence[torch.Tensor], mode: str, same: bool,
              max_rows: int | None) -> str:
    """`cka_form` for all pairs of `pairwise`'s arguments."""
    if info.name not in LINEAR_CKA:
        return "gram"
    tensors = list(left) if same else list(left) + list(right)
    count = len(tensors)
    pairs = count * (count + 1) / 2 if same else len(left) * len(right)
    return cka_form(info.name, [tuple(t.shape) for t in tensors], pairs=pairs, conv=mode,
                    max_rows=max_rows)
