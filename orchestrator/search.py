"""Optuna search over lineage fields through Ray Tune's OptunaSearch, with optional ASHA.

A sampled point is a set of dotted lineage fields applied to the sweep's base lineage, exactly
like a grid point, so every proposed lineage is an ordinary LineageSpec with an ordinary id.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from trainables.specs import SpecModel


class Distribution(SpecModel):
    """One searched field: `uniform`/`loguniform`/`int` between low and high, or a `choice`."""

    type: Literal["uniform", "loguniform", "int", "choice"] = Field(description="Distribution kind.")
    low: float | None = Field(None, description="Lower bound (uniform, loguniform, int).")
    high: float | None = Field(None, description="Upper bound (uniform, loguniform, int).")
    log: bool = Field(False, description="Log scale (int).")
    values: list[Any] | None = Field(None, description="Candidates (choice).")

    @model_validator(mode="after")
    def _bounds(self) -> Distribution:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty `values` list")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.type} needs low < high; got low={self.low}, high={self.high}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0; got {self.low}")
        return self

    def examples(self) -> list[Any]:
        """Values that must all make valid lineages (checked before anything runs)."""
        if self.type == "choice":
            return list(self.values)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def to_tune(self):
        from ray import tune

        if self.type == "choice":
            return tune.choice(list(self.values))
        if self.type == "int":
            return (tune.lograndint if self.log else tune.randint)(int(self.low), int(self.high) + 1)
        return (tune.loguniform if self.type == "loguniform" else tune.uniform)(self.low, self.high)


class AshaSpec(SpecModel):
    """Early stopping across levels: lineages falling behind at a level stop there."""

    grace_period: int = Field(1, ge=1, description="Levels every lineage runs before it may stop.")
    reduction_factor: float = Field(2.0, gt=1, description="Fraction 1/rf of lineages promoted per rung.")


class SearchSpec(SpecModel):
    """Optuna search: `num_samples` lineages proposed from `space`, optimising `metric`."""

    space: dict[str, Distribution] = Field(description="Dotted lineage field -> distribution.")
    sampler: Literal["tpe", "cmaes"] = Field("tpe", description="Optuna sampler.")
    num_samples: int = Field(8, ge=1, description="Lineages the search proposes in total.")
    metric: str = Field("test_acc", description="Reported metric to optimise (of the last level).")
    mode: Literal["max", "min"] = Field("max", description="Maximise or minimise the metric.")
    seed: int = Field(0, ge=0, description="Seed of the sampler.")
    asha: AshaSpec | None = Field(None, description="ASHA early stopping across levels.")

    @model_validator(mode="after")
    def _space_not_empty(self) -> SearchSpec:
        if not self.space:
            raise ValueError("search.space must name at least one field")
        if self.sampler == "cmaes" and any(d.type == "choice" for d in self.space.values()):
            # CMA-ES handles only continuous and integer dimensions; Optuna would fall back silently.
            raise ValueError("sampler 'cmaes' cannot search `choice` fields; use 'tpe'")
        return self

    def searcher(self, *, key: str, pending: Sequence[Mapping[str, Any]] = (),
                 evaluated: Sequence[tuple[Mapping[str, Any], float | None]] = ()):
        """OptunaSearch over the dotted fields of `config[key]`, resuming an earlier study.

        pending: points (dotted field -> value) of lineages an earlier driver started and did
            not finish: the study asks for them first, so they resume as its first trials.
        evaluated: (point, metric) of lineages already finished: told to the study as completed
            trials (a metric of None is left out).
        With either, the sampler's seed also depends on them: seeded as at the start, it would
        draw the same points again.
        """
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        seed = self.seed
        if pending or evaluated:
            text = json.dumps([self.seed, *pending, *(p for p, _ in evaluated)], sort_keys=True, default=str)
            seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        if self.sampler == "cmaes":
            sampler = optuna.samplers.CmaEsSampler(seed=seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=seed)

        def flat(point: Mapping[str, Any]) -> dict[str, Any]:
            return {f"{key}/{name}": value for name, value in point.items()}

        space = OptunaSearch.convert_search_space({key: self.param_space()})
        searcher = OptunaSearch(space, metric=self.metric, mode=self.mode, sampler=sampler,
                                points_to_evaluate=[flat(p) for p in pending] or None)
        for point, value in evaluated:
            if value is not None:
                searcher.add_evaluated_point(flat(point), value)
        return searcher

    def point(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """The searched fields of a lineage (`spec`: its JSON form), dotted field -> value."""
        out = {}
        for field in self.space:
            node: Any = spec
            for part in field.split("."):
                node = node[part]
            out[field] = node
        return out

    def scheduler(self):
        if self.asha is None:
            return None
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(time_attr="level", metric=self.metric, mode=self.mode,
                             grace_period=self.asha.grace_period, reduction_factor=self.asha.reduction_factor,
                             max_t=10_000)

    def param_space(self) -> dict[str, Any]:
        return {key: dist.to_tune() for key, dist in self.space.items()}
