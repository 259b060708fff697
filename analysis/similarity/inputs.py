"""Input checks (representations and sketches) and the reduction of conv activations
[n, c, h, w] to matrices [rows, features]."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from analysis.similarity.registry import MeasureInfo
from analysis.similarity.sketch import Sketch, sketch_kind

Spatial = tuple[int, int]


def as_tensor(x: Any, *, name: str, device: torch.device) -> torch.Tensor:
    """`x` ([n, p] or [n, c, h, w], tensor or array) as float64 on `device`, checked."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.asarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} has type {type(x).__name__}; expected a torch.Tensor or "
                         "numpy.ndarray")
    if x.ndim not in (2, 4):
        raise ValueError(f"{name} has shape {tuple(x.shape)} (rank {x.ndim}); expected rank "
                         "2 [n, p] or 4 [n, c, h, w]")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} has dtype {x.dtype}; expected a real dtype")
    if x.shape[0] < 2 or x.numel() == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected at least 2 examples "
                         "and 1 feature")
    x = x.detach().to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values; expected finite values")
    return x


def as_tensors(xs: Any, *, name: str, device: torch.device) -> list[torch.Tensor]:
    """A non-empty sequence of representations as float64 tensors on `device`."""
    if isinstance(xs, (torch.Tensor, np.ndarray)) or not isinstance(xs, Sequence):
        raise ValueError(f"{name} has type {type(xs).__name__}; expected a sequence (list "
                         "or tuple) of tensors or arrays")
    if len(xs) == 0:
        raise ValueError(f"{name} is empty; expected at least one representation")
    return [as_tensor(x, name=f"{name}[{i}]", device=device) for i, x in enumerate(xs)]


def check_examples(groups: Sequence[tuple[str, Sequence[torch.Tensor]]]) -> int:
    """The common number of examples n; ValueError naming the first mismatch."""
    first_name, first = groups[0][0], groups[0][1][0]
    n = first.shape[0]
    for name, xs in groups:
        for i, x in enumerate(xs):
            if x.shape[0] != n:
                raise ValueError(f"{name}[{i}] has {x.shape[0]} examples (rows); expected "
                                 f"{n} like {first_name}[0]: rows must be the same probe "
                                 "examples")
    return n


def as_sketches(sketches: Any, *, name: str, info: MeasureInfo) -> list[Sketch]:
    """A non-empty sequence of sketches of the kind measure `info` needs (see
    `sketch_kind`), as a list; ValueError naming the first that is not."""
    if isinstance(sketches, Sketch) or not isinstance(sketches, Sequence) or not sketches:
        raise ValueError(f"{name} must be a non-empty sequence of Sketch; got "
                         f"{type(sketches).__name__}")
    kind = sketch_kind(info)
    for i, s in enumerate(sketches):
        if not isinstance(s, Sketch):
            raise ValueError(f"{name}[{i}] has type {type(s).__name__}; expected a Sketch")
        if s.kind != kind:
            raise ValueError(f"{name}[{i}] is a {s.kind or 'hand-built'!r} sketch; measure "
                             f"{info.name!r} needs kind {kind!r} (see sketch_spec)")
    return list(sketches)


def check_sketches(sketches: Sequence[Sketch]) -> None:
    """One row count and one factor layout (CKA's Gram or feature form) across all."""
    rows = {s.n for s in sketches}
    if len(rows) > 1:
        raise ValueError(f"sketches have different row counts {sorted(rows)}; expected one "
                         "probe set (and one spatial target)")
    layouts = {s.factor.ndim for s in sketches if s.status == "ok" and s.factor is not None}
    if len(layouts) > 1:
        raise ValueError("sketches mix the gram and features forms; expected one form")


def spatial_size(x: torch.Tensor) -> Spatial:
    """(h, w) of a conv activation; a 2-D representation counts as 1 x 1."""
    return (int(x.shape[2]), int(x.shape[3])) if x.ndim == 4 else (1, 1)


def common_size(a: Spatial, b: Spatial) -> Spatial:
    """The size both layers of a pair are pooled to in `spatial` mode (the smaller one)."""
    return (min(a[0], b[0]), min(a[1], b[1]))


def to_matrix(x: torch.Tensor, mode: str, *, target: Spatial | None = None,
              max_rows: int | None = None) -> torch.Tensor:
    """Reduce `x` to a matrix for one conv `mode`.

    x: [n, p] (returned as is, but for the row stride of `spatial`) or [n, c, h, w].
    flatten -> [n, c*h*w]; avgpool -> [n, c];
    spatial -> [n*h'*w', c] with rows ordered (example, row, column), after average-pooling
    to `target` = (h', w') and keeping every k-th row so that at most `max_rows` remain.
    """
    if x.ndim == 2 and mode != "spatial":
        return x
    if mode == "flatten":
        return x.reshape(x.shape[0], -1)
    if mode == "avgpool":
        return x.mean(dim=(2, 3))
    if x.ndim == 2:
        rows = x
    else:
        if target is not None and target != spatial_size(x):
            x = F.adaptive_avg_pool2d(x, target)
        rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    if max_rows is not None and rows.shape[0] > max_rows:
        # A fixed stride keeps both members of a pair on the same positions.
        rows = rows[:: math.ceil(rows.shape[0] / max_rows)]
    return rows
