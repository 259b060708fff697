"""The analysis specification: probe set, measures and the pair set of a similarity study."""
from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator

from trainables.ids import digest
from trainables.messages import shown
from trainables.specs import SpecModel

# Fields that decide which pairs are computed, or how fast, or only the per-checkpoint products
# (neurons, receptive fields, sharpness: their settings are stored with them), but no similarity
# value: not in analysis_id.
SELECTION_FIELDS = frozenset({
    "measures", "layers", "scope", "tile_size", "num_actors", "neurons", "receptive_fields",
    "sharpness", "sharpness_batch", "sharpness_epsilon", "sharpness_iterations",
})

Scope = Literal["all", "dense", "lineage", "seeds"]
SCOPES: tuple[str, ...] = get_args(Scope)


class AnalysisSpec(SpecModel):
    """What `impsweep analyze` computes for a sweep's checkpoints."""

    probe_size: int | None = Field(
        None, ge=2, description="Probe examples; default: 5,000, the whole set for small data."
    )
    probe_seed: int = Field(0, ge=0, description="Seed of the probe subset.")
    measures: tuple[str, ...] = Field(("linear_cka", "pwcca"), strict=False, description="Similarity measures.")
    layers: Literal["same", "all"] = Field("same", description="Same layer only, or every layer pair.")
    scope: Scope | tuple[Scope, ...] = Field(
        "dense", description="dense: each checkpoint vs its lineage's level 0; lineage: all pairs "
        "within a lineage; seeds: same level across seeds of a config; all: every pair. A list of "
        "distinct scopes computes the union of their pairs, each once."
    )
    conv: Literal["auto", "flatten", "spatial", "avgpool"] = Field(
        "auto", description="Reduction of conv activations [n, c, h, w] to a matrix."
    )
    options: dict[str, dict[str, Any]] = Field({}, description="Per-measure options, e.g. rbf_cka: {threshold: 0.5}.")
    neurons: bool = Field(True, description="PSP-entropy of every probed unit (table neurons).")
    receptive_fields: bool = Field(
        True, description="Locality of first-layer connections of fully connected models."
    )
    sharpness: bool = Field(True, description="Hessian top eigenvalue and perturbed loss (levels columns).")
    sharpness_batch: int = Field(512, ge=1, description="Fixed seeded training batch for sharpness.")
    sharpness_epsilon: float = Field(1e-2, gt=0, description="Relative perturbation size.")
    sharpness_iterations: int = Field(20, ge=1, description="Power iterations for the top eigenvalue.")
    tile_size: int = Field(64, ge=1, description="Representations per side of a pair tile.")
    num_actors: int = Field(1, ge=1, description="Activation-extraction actors at most.")

    @field_validator("measures")
    @classmethod
    def _known_measures(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from analysis.similarity import MEASURES

        unknown = [m for m in v if m not in MEASURES]
        if unknown:
            raise ValueError(f"unknown measure {shown(unknown[0])}; expected one of {sorted(MEASURES)}")
        if not v:
            raise ValueError(f"at least one measure is needed; expected some of {sorted(MEASURES)}")
        return tuple(dict.fromkeys(v))

    @field_validator("scope", mode="before")
    @classmethod
    def _canonical_scope(cls, v: Any) -> Any:
        """One scope as given; a list sorted, and a list of one as that one scope, so that specs
        with the same pair set are equal (and dump alike)."""
        if isinstance(v, str):
            items = [v]
        elif isinstance(v, (list, tuple)):
            items = list(v)
        else:
            raise ValueError(f"expected a scope or a non-empty list of distinct scopes, each one of {list(SCOPES)}")
        unknown = [s for s in items if s not in SCOPES]
        if unknown:
            raise ValueError(f"unknown scope {shown(unknown[0])}; expected one of {list(SCOPES)} or a list of them")
        if not items:
            raise ValueError(f"at least one scope is needed; expected some of {list(SCOPES)}")
        twice = [s for i, s in enumerate(items) if s in items[:i]]
        if twice:
            raise ValueError(f"scope {shown(twice[0])} is listed twice; expected distinct scopes of {list(SCOPES)}")
        return items[0] if len(items) == 1 else tuple(sorted(items))

    @field_validator("options")
    @classmethod
    def _options_of_known_measures(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from analysis.similarity import MEASURES

        from analysis.similarity.registry import resolve_options

        unknown = [m for m in v if m not in MEASURES]
        if unknown:
            raise ValueError(f"options for unknown measure {shown(unknown[0])}; expected one of {sorted(MEASURES)}")
        errors = []
        for measure, options in v.items():  # checked here, not first inside a tile actor
            try:
                resolve_options(measure, options)
            except ValueError as error:
                errors.append(f"{measure}: {error}")
        if errors:
            raise ValueError("; ".join(errors))
        return v


def analysis_id(spec: AnalysisSpec) -> str:
    """`"a" + digest` of the fields that change values (probe set, conv mode, options)."""
    dumped = spec.model_dump(mode="json")
    defaults = AnalysisSpec().model_dump(mode="json")
    ident = {k: v for k, v in dumped.items() if k not in SELECTION_FIELDS and v != defaults[k]}
    return "a" + digest({"schema_version": 1, **ident})
