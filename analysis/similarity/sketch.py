"""Per-representation sketches: what every pair needs from one representation, computed once.

A sketch holds one `factor` that pairs are formed from (an orthonormal basis for the CCA
family, a feature matrix or a packed Gram for CKA and NBS), plus the scalars and small
tensors that the pair formulas normalise with."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import torch

from analysis.similarity import cka
from analysis.similarity.registry import MeasureInfo

EPS = torch.finfo(torch.float64).eps


@dataclass(frozen=True)
class Sketch:
    """What the pair kernels need from one representation.

    n: rows; status: "ok" or why every pair with it is null; dim: effective dimension
    (rank for the CCA family, reduced dimension for svcca, columns of `factor` otherwise);
    factor: [n, dim] or a packed Gram [L]; norm: normaliser of the pair formula; extras:
    measure-specific tensors (singular values, S V^T, unit means, row norms)."""

    n: int
    status: str
    dim: int = 0
    rank: int = 0
    units: int = 0
    factor: torch.Tensor | None = None
    norm: float = 0.0
    extras: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


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


def thin_svd(zc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-aware thin SVD: (U [n, r], s [r], Vh [r, p]) keeping s_i > max(n, p) eps s_1."""
    u, s, vh = torch.linalg.svd(zc, full_matrices=False)
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


def cca_sketch(z: torch.Tensor, info: MeasureInfo, options: Mapping[str, Any]) -> Sketch:
    """Orthonormal basis of the centred column space (SIMILARITY.md's rank rule)."""
    n = z.shape[0]
    zc, live, means = centre(z)
    units = int(live.sum())
    if units == 0:
        return Sketch(n=n, status="constant")
    u, s, vh = thin_svd(zc)
    rank = int(s.numel())
    extras: dict[str, Any] = {}
    if info.name == "svcca":
        dim = fewest_reaching(s * s, options["variance"])
        u = u[:, :dim]
    else:
        dim = rank
    if info.name in ("pwcca", "pwcca_google"):
        # <h_i, x_j> for a canonical variate h_i = U a_i and a centred unit x_j is
        # (a_i^T S V^T)_j, so S V^T (over live units) is all the weights need.
        extras["sv"] = (s[:, None] * vh)[:, live]
        extras["s"] = s
        extras["means"] = means[live]
        extras["unit_sum"] = vh[:, live].sum(dim=1)
    return Sketch(n=n, status="ok", dim=dim, rank=rank, units=units, factor=u,
                  extras=MappingProxyType(extras))


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
        u, s, _ = thin_svd(zc)
        factor = u * s
    return Sketch(n=n, status="ok", dim=int(factor.shape[1]), rank=int(factor.shape[1]),
                  units=units, factor=factor, norm=float(zc.norm()))


def cka_sketch(z: torch.Tensor, info: MeasureInfo, options: Mapping[str, Any],
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


def build_sketch(z: torch.Tensor, info: MeasureInfo, options: Mapping[str, Any],
                 form: str = "gram") -> Sketch:
    """The sketch of one reduced representation z: [n, p] for measure `info`; an SVD that
    fails to converge gives status "linalg_error" (null pairs), not an exception."""
    try:
        if info.family == "cca":
            return cca_sketch(z, info, options)
        if info.family == "nbs":
            return nbs_sketch(z)
        return cka_sketch(z, info, options, form)
    except torch.linalg.LinAlgError:
        return Sketch(n=z.shape[0], status="linalg_error")
