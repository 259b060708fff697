"""The registry of similarity measures: name -> kind, range, invariances and default options."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

CONV_MODES = ("flatten", "spatial", "avgpool")
PRECISIONS = ("exact", "fast")
# Options that belong to the conv reduction, accepted by every measure.
CONV_OPTIONS: Mapping[str, Any] = MappingProxyType({"max_rows": None})
# Stated agreement of each precision with a float64 reference.
TOLERANCE = MappingProxyType({"exact": 1e-8, "fast": 1e-4})


@dataclass(frozen=True)
class MeasureInfo:
    """Metadata of one measure; `defaults` are its own options (conv options excluded)."""

    name: str
    kind: str  # "similarity" or "distance"
    family: str  # "cca" (rank-aware bases), "cka" (Gram inner products) or "nbs"
    range: tuple[float, float]
    clipped: bool  # values clipped to `range` (round-off overshoots it)
    symmetric: bool  # value(x, y) == value(y, x)
    invariances: tuple[str, ...]
    defaults: Mapping[str, Any]
    auto_conv: str  # the conv mode that conv="auto" resolves to
    description: str


def _measure(name: str, family: str, description: str, *, kind: str = "similarity",
             value_range: tuple[float, float] = (0.0, 1.0), clipped: bool = True,
             symmetric: bool = True, invariances: tuple[str, ...],
             defaults: Mapping[str, Any] | None = None) -> MeasureInfo:
    return MeasureInfo(
        name=name, kind=kind, family=family, range=value_range, clipped=clipped,
        symmetric=symmetric, invariances=invariances,
        defaults=MappingProxyType(dict(defaults or {})),
        # The seed papers' own code: channels-as-features for CCA, flattening elsewhere.
        auto_conv="spatial" if family == "cca" else "flatten",
        description=description,
    )


_LINEAR = ("translation", "isotropic_scaling", "orthogonal", "permutation")
_INVERTIBLE = _LINEAR + ("invertible_linear",)

MEASURES: Mapping[str, MeasureInfo] = MappingProxyType({m.name: m for m in (
    _measure("mean_cca", "cca", "mean canonical correlation over all min(rx, ry) "
             "coefficients; truncate=t averages the leading ones reaching t of their sum "
             "(google/svcca's result['mean'] with t=0.98)",
             invariances=_INVERTIBLE, defaults={"truncate": None}),
    _measure("mean_cca_sq", "cca", "mean squared canonical correlation (Yanai's R2_CCA)",
             invariances=_INVERTIBLE),
    _measure("svcca", "cca", "SVCCA (Raghu et al. 2017): mean canonical correlation after "
             "keeping the fewest SVD directions with `variance` of the squared spectrum",
             invariances=_LINEAR, defaults={"variance": 0.99}),
    _measure("pwcca", "cca", "projection-weighted CCA as in Morcos et al. 2018; weights "
             "from the representation with fewer effective dimensions (ties: first)",
             symmetric=False, invariances=_INVERTIBLE),
    _measure("pwcca_google", "cca", "google/svcca compute_pwcca compatibility: unwhitened "
             "rotation with neuron means added back; depends on SVD signs (about +-0.01) "
             "and on argument order", symmetric=False,
             invariances=("translation_approx", "isotropic_scaling")),
    _measure("linear_cka", "cka", "linear CKA with the biased (Gretton) HSIC",
             invariances=_LINEAR[:3]),
    _measure("linear_cka_debiased", "cka", "linear CKA with the unbiased HSIC (Song et al.)",
             value_range=(-1.0, 1.0), clipped=False, invariances=_LINEAR[:3]),
    _measure("linear_cka_minibatch", "cka", "minibatch linear CKA (Nguyen et al. 2021): "
             "unbiased HSIC_1 accumulated over consecutive row batches",
             value_range=(-1.0, 1.0), clipped=False, invariances=_LINEAR[:3],
             defaults={"batch_size": 256}),
    _measure("rbf_cka", "cka", "CKA with an RBF kernel, sigma^2 = threshold^2 * median "
             "squared distance", invariances=_LINEAR[:3], defaults={"threshold": 0.8}),
    _measure("nbs", "nbs", "normalized Bures similarity (Tang et al. 2020), linear kernel",
             invariances=_LINEAR[:3]),
    _measure("procrustes", "nbs", "angular Procrustes distance arccos(NBS) "
             "(Williams et al. 2021), a metric; near 0 from the optimal rotation's residual",
             kind="distance",
             value_range=(0.0, math.pi / 2), invariances=_LINEAR[:3]),
)})


def get_measure(measure: str) -> MeasureInfo:
    """The registry entry of `measure`; ValueError naming the valid keys otherwise."""
    if not isinstance(measure, str) or measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; expected one of {sorted(MEASURES)}")
    return MEASURES[measure]


def resolve_conv(measure: str, conv: str = "auto") -> str:
    """The concrete conv mode (`flatten`, `spatial` or `avgpool`) used for `measure`."""
    info = get_measure(measure)
    if conv == "auto":
        return info.auto_conv
    if conv not in CONV_MODES:
        raise ValueError(f"unknown conv {conv!r}; expected one of {['auto', *CONV_MODES]}")
    return conv


def resolve_options(measure: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults of `measure` and the conv options, overridden by checked `options`."""
    info = get_measure(measure)
    valid = {**info.defaults, **CONV_OPTIONS}
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} for measure {measure!r}; "
                         f"expected one of {sorted(valid)}")
    merged = {**valid, **options}
    for key, value in merged.items():
        _check_option(key, value)
    return merged


def _check_option(key: str, value: Any) -> None:
    def bad(expected: str) -> ValueError:
        return ValueError(f"invalid option {key}={value!r}; expected {expected}")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_real = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "max_rows" and value is not None and not (is_int and value >= 1):
        raise bad("None or an integer >= 1")
    if key == "batch_size" and not (is_int and value >= 4):
        raise bad("an integer >= 4 (the unbiased HSIC needs 4 rows)")
    if key == "threshold" and not (is_real and math.isfinite(value) and value > 0):
        raise bad("a finite number > 0")
    if key == "variance" and not (is_real and 0 < value <= 1):
        raise bad("a number in (0, 1]")
    if key == "truncate" and value is not None and not (is_real and 0 < value <= 1):
        raise bad("None or a number in (0, 1]")
