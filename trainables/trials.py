"""The trial protocol: what the driver puts in a Ray Tune trial's config and the trainable reads.

A trial trains one lineage (`LineageTrial`), a bundle of lineages trained fused (`BundleTrial`),
or the lineage a searcher samples (`SearchTrial`). Tune deep-copies and serialises trial configs,
so they cross as plain JSON values; this module alone knows their keys.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Union

from trainables.ids import lineage_id
from trainables.specs import LineageSpec, with_overrides
from trainables.tracking import TrackingRef

SAMPLE_KEY = "sample"  # the searcher's key: it fills config[SAMPLE_KEY] with the sampled dotted fields
_LINEAGE, _BUNDLE, _SPEC, _BASE = "lineage", "bundle", "spec", "base"
_LINEAGE_ID, _WORKDIR, _TRACKING = "lineage_id", "workdir", "tracking"


@dataclass(frozen=True)
class LineageTrial:
    """One lineage, given whole: a grid point, a member of a bundle, or a search trial's sample
    applied. `tracking.parent_run_id` is empty when the trainable is to find or create the run."""

    lineage_id: str
    spec: LineageSpec
    workdir: str
    tracking: TrackingRef

    @property
    def lineage_ids(self) -> tuple[str, ...]:
        return (self.lineage_id,)

    def to_config(self) -> dict[str, Any]:
        return {_LINEAGE: self._entry()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LineageTrial:
        return cls._from_entry(_entry(config, cls))

    def _entry(self) -> dict[str, Any]:
        return {_LINEAGE_ID: self.lineage_id, _SPEC: self.spec.model_dump(mode="json"), _WORKDIR: self.workdir,
                _TRACKING: asdict(self.tracking)}

    @classmethod
    def _from_entry(cls, entry: Mapping[str, Any]) -> LineageTrial:
        return cls(entry[_LINEAGE_ID], LineageSpec.model_validate(entry[_SPEC]), entry[_WORKDIR],
                   TrackingRef(**entry[_TRACKING]))


@dataclass(frozen=True)
class BundleTrial:
    """Lineages of one configuration trained as one stacked model (`trainables.fused`); each
    keeps its own checkpoints, MLflow runs and resume. The first one's workdir is the bundle's."""

    lineages: tuple[LineageTrial, ...]

    def __post_init__(self) -> None:
        if not self.lineages:
            raise ValueError("lineages: a bundle needs at least one lineage; got none")

    @property
    def lineage_ids(self) -> tuple[str, ...]:
        return tuple(lineage.lineage_id for lineage in self.lineages)

    @property
    def workdir(self) -> str:
        return self.lineages[0].workdir

    def to_config(self) -> dict[str, Any]:
        return {_LINEAGE: {_BUNDLE: [lineage._entry() for lineage in self.lineages]}}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BundleTrial:
        return cls(tuple(LineageTrial._from_entry(entry) for entry in _entry(config, cls)[_BUNDLE]))


@dataclass(frozen=True)
class SearchTrial:
    """The lineage a searcher proposes: the sweep's base lineage (JSON form) with the sampled
    dotted fields applied. Tune's param space holds it without a sample; the searcher fills
    `sample` in each trial's config."""

    base: Mapping[str, Any]
    workdir: str
    tracking: TrackingRef
    sample: Mapping[str, Any] = field(default_factory=dict)

    @property
    def lineage_ids(self) -> tuple[str, ...]:
        """None: the lineage is known only once the sample validates (`lineage()`)."""
        return ()

    def lineage(self) -> LineageTrial:
        """The lineage its sample makes. Raises pydantic's ValidationError (a ValueError) for a
        sample that makes no valid lineage."""
        spec = LineageSpec.model_validate(with_overrides(dict(self.base), dict(self.sample)))
        return LineageTrial(lineage_id(spec), spec, self.workdir, self.tracking)

    def to_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {_LINEAGE: {_BASE: self.base, _WORKDIR: self.workdir,
                                             _TRACKING: asdict(self.tracking)}}
        if self.sample:
            config[SAMPLE_KEY] = dict(self.sample)
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SearchTrial:
        entry = _entry(config, cls)
        return cls(entry[_BASE], entry[_WORKDIR], TrackingRef(**entry[_TRACKING]), config.get(SAMPLE_KEY, {}))


Trial = Union[LineageTrial, BundleTrial, SearchTrial]
_KINDS: dict[str, type] = {_BUNDLE: BundleTrial, _SPEC: LineageTrial, _BASE: SearchTrial}


def read_trial(config: Mapping[str, Any]) -> Trial:
    """The trial a config describes (Tune's `trial.config`, or a `to_config()`)."""
    return _kind(config).from_config(config)


def grid_param_space(trials: Sequence[LineageTrial | BundleTrial], *,
                     grid_search: Callable[[list], Any]) -> dict[str, Any]:
    """Tune's param space of one trial per item of `trials`. grid_search: `ray.tune.grid_search`
    (passed in: `tune_entry` is the only module of trainables that imports ray.tune)."""
    return {_LINEAGE: grid_search([trial.to_config()[_LINEAGE] for trial in trials])}


def name_trial(config: Mapping[str, Any], *, trial_id: str) -> str:
    """A trial's name (and folder name): its lineage id; for a bundle, its first lineage id and
    its size (`<lineage id>-x<K>`); for a search trial, the sampled lineage's id, or `trial_id`
    while the sample makes no valid lineage (the trial then fails with the validation error)."""
    trial = read_trial(config)
    if isinstance(trial, BundleTrial):
        return f"{trial.lineages[0].lineage_id}-x{len(trial.lineages)}"
    if isinstance(trial, SearchTrial):
        try:
            return trial.lineage().lineage_id
        except Exception:  # an invalid sample, whatever the error: the trial reports it when it runs
            return trial_id
    return trial.lineage_id


def trial_lineages(config: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The lineage ids a trial config names: its lineage, or a bundle's lineages; none for a
    search trial (its lineage is known once it reports) or for no config at all."""
    if not config or _LINEAGE not in config:
        return ()
    return read_trial(config).lineage_ids


def _kind(config: Mapping[str, Any]) -> type:
    entry = config.get(_LINEAGE) if isinstance(config, Mapping) else None
    if not isinstance(entry, Mapping):
        raise ValueError(f"config: {type(config).__name__} without a {_LINEAGE!r} mapping is no trial config")
    for key, kind in _KINDS.items():
        if key in entry:
            return kind
    raise ValueError(f"config[{_LINEAGE!r}]: keys {sorted(entry)} name no trial; expected one of {sorted(_KINDS)}")


def _entry(config: Mapping[str, Any], kind: type) -> Mapping[str, Any]:
    found = _kind(config)
    if found is not kind:
        raise ValueError(f"config: a {found.__name__} config, not a {kind.__name__} one")
    return config[_LINEAGE]
