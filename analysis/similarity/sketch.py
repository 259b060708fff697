"""Per-representation sketches: what every pair needs from one representation, computed once.

A sketch holds one `factor` that pairs are formed from (an orthonormal basis for the CCA
family, a feature matrix or a packed Gram for CKA and NBS), plus the scalars and small
tensors that the pair formulas normalise with.

Sketches are shared between measures where they can be: every CCA measure is served by one
"cca" sketch (basis, spectrum and the PWCCA weights' S V^T), from which `measure_view` cuts
SVCCA's reduced basis; NBS and Procrustes share one "nbs" factor; each CKA variant has its
own. `sketch_kind` names the shared sketch, `SKETCH_OPTIONS` the options that change it.
`to_payload` and `from_payload` turn a sketch into plain tensors and scalars and back
(what `torch.load(..., weights_only=True)` reads)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

import torch

from analysis.similarity import cka, spectra
from analysis.similarity.registry import MeasureInfo, get_measure

EPS = torch.finfo(torch.float64).eps


@dataclass(frozen=True)
class Sketch:
    """What the pair kernels need from one representation.

    n: rows; status: "ok" or why every pair with it is null; dim: effective dimension
    (rank for the CCA family, reduced dimension for svcca, columns of `factor` otherwise);
    factor: [n, dim] or a packed Gram [L]; norm: normaliser of the pair formula; extras:
    measure-specific tensors (singular values, S V^T, unit means, row norms); kind: the
    `sketch_kind` it was built as ("" when built by hand)."""

    n: int
    status: str
    dim: int = 0
    rank: int = 0
    units: int = 0
    factor: torch.Tensor | None = None
    norm: float = 0.0
    extras: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    kind: str = ""


def centre(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Column-centred z with constant (dead) columns set exactly to zero.

    z: [n, p] -> (zc [n, p], live [p] bool, means [p]). A column is constant when its centred
    norm is round-off of its raw norm: relative, so tiny scales are not mistaken for dead."""
    means = z.mean(dim=0)
    zc = z - means
    live = zc.norm(dim=0) > z.shape[0] * EPS * z.norm(dim=0)
    if not bool(live.all()):
        zc = zc * live
    return zc, live, means


def ranked_svd(zc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-aware thin SVD: (U [n, r], s [r], Vh [r, p]) keeping s_i > max(n, p) eps s_1."""
    u, s, vh = spectra.thin_svd(zc)
    if s.numel() == 0 or not bool(s[0] > 0):
        return u[:, :0], s[:0], vh[:0]
    rank = int((s > max(zc.shape) * EPS * s[0]).sum())
    return u[:, :rank], s[:rank], vh[:rank]


def fewest_reaching(weights: torch.Tensor, fraction: float) -> int:
    """The fewest leading entries of a non-increasing non-negative vector whose sum reaches
    `fraction` of the total."""
    cumulative = torch.cumsum(weights, dim=0)
    reached = cumulative >= fraction * cumulative[-1]
    return int(torch.nonzero(reached)[0, 0]) + 1


def cca_sketch(z: torch.Tensor) -> Sketch:
    """Orthonormal basis of the centred column space (SIMILARITY.md's rank rule), with what
    every CCA measure needs: the spectrum and, for the PWCCAs, S V^T over the live units."""
    n = z.shape[0]
    zc, live, means = centre(z)
    units = int(live.sum())
    if units == 0:
        return Sketch(n=n, status="constant")
    u, s, vh = ranked_svd(zc)
    rank = int(s.numel())
    # <h_i, x_j> for a canonical variate h_i = U a_i and a centred unit x_j is
    # (a_i^T S V^T)_j, so S V^T (over live units) is all the PWCCA weights need.
    extras = {"sv": (s[:, None] * vh)[:, live], "s": s, "means": means[live],
              "unit_sum": vh[:, live].sum(dim=1)}
    return Sketch(n=n, status="ok", dim=rank, rank=rank, units=units, factor=u,
                  extras=MappingProxyType(extras))


def measure_view(sketch: Sketch, info: MeasureInfo, *, options: Mapping[str, Any]) -> Sketch:
    """The sketch as measure `info` uses it: SVCCA keeps the fewest leading directions of the
    "cca" basis whose squared singular values reach `variance` of the total; every other
    measure uses its kind's sketch as it is."""
    if info.name != "svcca" or sketch.status != "ok" or "s" not in sketch.extras:
        return sketch  # (the last: already reduced)
    s = sketch.extras["s"]
    dim = fewest_reaching(s * s, options["variance"])
    return Sketch(n=sketch.n, status="ok", dim=dim, rank=sketch.rank, units=sketch.units,
                  factor=sketch.factor[:, :dim], kind=sketch.kind)


def nbs_sketch(z: torch.Tensor) -> Sketch:
    """A factor F with F_i^T F_j having the singular values of Xc_i^T Xc_j: the live centred
    columns when they are fewer than n, else U S of the thin SVD (rank <= n - 1)."""
    n = z.shape[0]
    zc, live, _ = centre(z)
    units = int(live.sum())
    if units == 0:
        return Sketch(n=n, status="constant")
    if units <= n:
        factor = zc[:, live]
    else:
        u, s, _ = ranked_svd(zc)
        factor = u * s
    return Sketch(n=n, status="ok", dim=int(factor.shape[1]), rank=int(factor.shape[1]),
                  units=units, factor=factor, norm=float(zc.norm()))


def cka_sketch(z: torch.Tensor, info: MeasureInfo, *, options: Mapping[str, Any],
               form: str) -> Sketch:
    """Gram-form sketch (packed centred Gram, [L]) or feature-form sketch (Zc, [n, p])."""
    n = z.shape[0]
    zc, live, _ = centre(z)
    if not bool(live.any()):
        return Sketch(n=n, status="constant")
    name = info.name
    if name in ("linear_cka_debiased", "linear_cka_minibatch") and n < 4:
        return Sketch(n=n, status="too_few_rows")
    if form == "features":
        zc = zc[:, live]
        gram_sq = float(torch.linalg.matrix_norm(zc.T @ zc) ** 2)
        extras: dict[str, Any] = {}
        norm_sq = gram_sq
        if name == "linear_cka_debiased":
            rows = (zc * zc).sum(dim=1)
            total = float(rows.sum())
            extras = {"rows": rows, "sq": total}
            # Kornblith et al.'s debiased helper on the pair (Zc, Zc).
            norm_sq = (gram_sq - n / (n - 2.0) * float(rows @ rows)
                       + total * total / ((n - 1.0) * (n - 2.0)))
        return _cka_result(n, zc, norm_sq, extras)
    if name == "linear_cka":
        vector = cka.linear_gram_vector(zc)
    elif name == "linear_cka_debiased":
        vector = cka.debiased_gram_vector(zc)
    elif name == "linear_cka_minibatch":
        vector = cka.minibatch_vector(zc, options["batch_size"])
    else:
        vector = cka.rbf_gram_vector(zc, options["threshold"])
        if vector is None:
            return Sketch(n=n, status="zero_bandwidth")
    return _cka_result(n, vector, float(vector @ vector), {})


def _cka_result(n: int, factor: torch.Tensor, norm_sq: float,
                extras: Mapping[str, Any]) -> Sketch:
    if not norm_sq > 0:
        return Sketch(n=n, status="degenerate")
    return Sketch(n=n, status="ok", dim=int(factor.shape[-1]), factor=factor,
                  norm=norm_sq ** 0.5, extras=MappingProxyType(dict(extras)))


def sketch_kind(info: MeasureInfo) -> str:
    """The sketch a measure's pairs are formed from: "cca" for the whole CCA family, "nbs"
    for NBS and Procrustes, the measure's own name for each CKA variant."""
    return info.family if info.family in ("cca", "nbs") else info.name


# Measure options that change a kind's sketch (besides the reduction's `max_rows`); every
# other option acts on pairs only (mean_cca's truncate, svcca's variance via measure_view).
SKETCH_OPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "linear_cka_minibatch": ("batch_size",), "rbf_cka": ("threshold",)})


def base_sketch(z: torch.Tensor, kind: str, *, options: Mapping[str, Any],
                form: str = "gram") -> Sketch:
    """The sketch of `kind` (see `sketch_kind`) of one reduced representation z: [n, p]; an
    SVD that fails to converge gives status "linalg_error" (null pairs), not an exception."""
    try:
        if kind == "cca":
            built = cca_sketch(z)
        elif kind == "nbs":
            built = nbs_sketch(z)
        else:
            built = cka_sketch(z, get_measure(kind), options=options, form=form)
    except torch.linalg.LinAlgError:
        built = Sketch(n=z.shape[0], status="linalg_error")
    return replace(built, kind=kind)


def build_sketch(z: torch.Tensor, info: MeasureInfo, *, options: Mapping[str, Any],
                 form: str = "gram") -> Sketch:
    """The sketch of one reduced representation z: [n, p] as measure `info` uses it."""
    base = base_sketch(z, sketch_kind(info), options=options, form=form)
    return measure_view(base, info, options=options)


def sketch_bytes(sketch: Sketch) -> int:
    """Memory held by the sketch's tensors."""
    tensors = [sketch.factor, *sketch.extras.values()]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def to_payload(sketch: Sketch) -> dict[str, Any]:
    """The sketch as a dict of tensors, numbers and strings (torch.save-able, weights only).
    Tensors are compact copies: torch.save writes a view's whole storage (U of a full SVD
    for a rank-deficient basis) otherwise."""
    def own(value: Any) -> Any:
        return value.clone(memory_format=torch.contiguous_format) if isinstance(value, torch.Tensor) else value

    return {"n": sketch.n, "status": sketch.status, "dim": sketch.dim, "rank": sketch.rank,
            "units": sketch.units, "factor": own(sketch.factor), "norm": sketch.norm,
            "extras": {k: own(v) for k, v in sketch.extras.items()}, "kind": sketch.kind}


def from_payload(payload: Mapping[str, Any]) -> Sketch:
    """The inverse of `to_payload`; ValueError when a field is missing or of the wrong type."""
    try:
        fields = {"n": int, "status": str, "dim": int, "rank": int, "units": int,
                  "norm": float, "kind": str}
        values = {k: payload[k] for k in fields}
        factor, extras = payload["factor"], payload["extras"]
    except (KeyError, TypeError) as error:
        raise ValueError(f"sketch payload lacks {error}; expected the fields of Sketch") from error
    bad = [k for k, t in fields.items() if not isinstance(values[k], t)]
    if bad or not (factor is None or isinstance(factor, torch.Tensor)) or not isinstance(extras, dict):
        raise ValueError(f"sketch payload has fields of the wrong type: {bad or ['factor/extras']}")
    return Sketch(**values, factor=factor, extras=MappingProxyType(dict(extras)))
