"""What a sweep still has to do: per lineage, done / stopped / partial (up to which level) / to do;
and the parent runs closed to match that state once Tune has returned.

Read from the workdir (complete level folders whose checkpoint matches its recorded digest) and
MLflow (FINISHED level runs); a level counts as done only when both have it. A search lineage
that the sweep's scheduler stopped early (`orchestrator.stops`) is finished for that sweep once
its levels up to the stop are done.
"""
from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from mlflow.tracking import MlflowClient

from orchestrator.specs import SweepSpec
from trainables.checkpoints import LineageCheckpoints
from trainables.ids import lineage_id
from trainables.lineage_run import final_level
from trainables.specs import LineageSpec, with_overrides
from trainables.level_index import LevelIndex, read_index
from trainables.records import finished_level_runs, level_experiments, stream_runs
from trainables.tracking import TAG, search_all, set_lineage_status, stopped_tag, sweep_members


@dataclass(frozen=True)
class LineagePlan:
    lineage_id: str
    spec: LineageSpec
    state: str  # "done" | "stopped" (by the sweep's scheduler) | "partial" | "todo"
    levels_done: int  # levels 0.. complete on disk and in MLflow
    n_levels: int  # levels of the lineage, dense level 0 included
    metrics: Mapping[str, float] = field(default_factory=dict)  # of the newest level done

    @property
    def finished(self) -> bool:
        """Nothing left to run for this sweep: every level done, or stopped by its scheduler."""
        return self.state in ("done", "stopped")

    @property
    def test_acc(self) -> float | None:
        """Test accuracy of the newest level done (None before any)."""
        return self.metrics.get("test_acc")


def _finished_levels(client: MlflowClient | None, sweep: str,
                     lineage_ids: Collection[str]) -> dict[str, Mapping[int, dict[str, float]]]:
    """lineage id -> {level: metrics} of the FINISHED level runs of `lineage_ids`: read from the
    experiments' level index (`trainables.level_index`: a tag per lineage) when it is complete,
    else from the runs themselves (the earliest run if an old bug made two: MLflow lists the
    newest first), searched only in the experiments that can hold them."""
    if client is None or not lineage_ids:
        return {}
    index = read_index(client)
    if index.complete:
        return {lid: _IndexedLevels(index, lid) for lid in lineage_ids if lid in index.levels}
    out: dict[str, dict[int, dict[str, float]]] = {}
    experiments = level_experiments(client, sweep, lineage_ids=lineage_ids)
    for run in finished_level_runs(client, lineage_ids, experiment_ids=experiments):
        out.setdefault(run.lineage_id, {})[run.level] = run.metrics
    return out


class _IndexedLevels(Mapping):
    """A lineage's indexed levels as {level: metrics}, each level's metrics parsed when asked
    for (the plan of 10,000 lineages keeps 10,000 JSON strings, not 200,000 dicts)."""

    def __init__(self, index: LevelIndex, lineage: str):
        self.index, self.lineage, self.levels = index, lineage, index.levels[lineage]

    def __getitem__(self, level: int) -> dict[str, float]:
        if level not in self.levels:
            raise KeyError(level)
        return self.index.metrics(self.lineage, level)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.levels))

    def __len__(self) -> int:
        return len(self.levels)


class SearchedLineages(NamedTuple):
    """A search sweep's lineages proposed so far, and where its scheduler stopped some."""

    specs: list[LineageSpec]  # in the order they started
    stops: dict[str, int]  # lineage id -> last level completed before the sweep's scheduler stopped it


def searched_lineages(sweep: SweepSpec, client: MlflowClient | None) -> SearchedLineages:
    """A search sweep's lineages are the ones proposed so far: members found in MLflow, in the
    order they started; with the last level of those its scheduler stopped."""
    if client is None:
        return SearchedLineages([], {})
    # Kept per run: what this needs, not the Run (a page of those is held at a time).
    space = tuple(sweep.search.space)
    runs = [(run.info.start_time or 0, run.data.tags[f"{TAG}lineage_id"], run.data.tags.get(stopped_tag(sweep.name)),
             {k: v for k, v in run.data.params.items() if k in space})
            for run in stream_runs(client, sweep_members(sweep.name))]
    specs, stops, store = [], {}, sweep.store
    for _, lid, stop, params in sorted(runs, key=lambda r: r[0]):
        if stop is not None:
            stops[lid] = int(stop)
        stored = LineageCheckpoints(store, lid).stored_spec()
        if stored is not None:
            specs.append(LineageSpec.model_validate(stored["spec"]))
        elif (spec := _spec_from_params(sweep, params, lid)) is not None:
            specs.append(spec)
    return SearchedLineages(specs, stops)


def _spec_from_params(sweep: SweepSpec, params: dict[str, str], lid: str) -> LineageSpec | None:
    """The lineage of a parent run whose trial died before writing spec.json: the base lineage
    with the searched fields read back from the run's params (None if that gives another id)."""
    sample = {}
    for key in sweep.search.space:
        if key in params:
            try:
                sample[key] = json.loads(params[key])
            except ValueError:  # a string logged without quotes, or str() of a bool or None
                sample[key] = {"True": True, "False": False, "None": None}.get(params[key], params[key])
    try:
        spec = LineageSpec.model_validate(with_overrides(sweep.base, sample))
    except ValueError:
        return None
    return spec if lineage_id(spec) == lid else None


def tracking_store_exists(sweep: SweepSpec) -> bool:
    uri = sweep.resolved_tracking_uri
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).exists()


def plan_sweep(sweep: SweepSpec, client: MlflowClient | None = None) -> list[LineagePlan]:
    """The plan of every lineage of `sweep`, in sweep order. Creates nothing."""
    if client is None and tracking_store_exists(sweep):
        client = MlflowClient(sweep.resolved_tracking_uri)
    plans, store = [], sweep.store
    specs, stops = (sweep.lineages, {}) if sweep.search is None else searched_lineages(sweep, client)
    finished = _finished_levels(client, sweep.name, {lineage_id(spec) for spec in specs})
    for spec in specs:
        lid = lineage_id(spec)
        n_levels = final_level(store, spec) + 1
        on_disk = set(LineageCheckpoints(store, lid).verified_levels())
        logged = finished.get(lid, {})
        done = 0
        while done < n_levels and done in on_disk and done in logged:
            done += 1
        if done == n_levels:
            state = "done"
        elif lid in stops and done > stops[lid]:
            state = "stopped"
        else:
            state = "partial" if done or on_disk else "todo"
        metrics = logged.get(done - 1, {}) if done else {}
        plans.append(LineagePlan(lid, spec, state, done, n_levels, metrics))
    return plans


def close_cut_off(client: MlflowClient, sweep: SweepSpec, *, plans: Sequence[LineagePlan],
                  failed: Collection[str]) -> int:
    """After Tune has returned (`plans` read since), close the parent runs an interrupted
    experiment (Ctrl-C) left RUNNING: it stops its trials without failing them, and ends their
    actors after a grace period, so no trial is left to close their runs. Unfinished lineages
    become KILLED, and one whose last level landed in the grace period FINISHED. Returns how
    many lineages are unfinished without having failed."""
    close_done(client, sweep, plans=plans)
    unfinished = {p.lineage_id for p in plans if not p.finished} - set(failed)
    set_parent_status(client, sweep, lineages=unfinished, status="KILLED", where="= 'RUNNING'")
    return len(unfinished)


def close_done(client: MlflowClient, sweep: SweepSpec, *, plans: Sequence[LineagePlan]) -> None:
    """Mark FINISHED the parent run of every lineage whose levels are all recorded: a driver
    killed between a trial's last level and its end leaves it RUNNING, and no trial will run
    the lineage again to close it."""
    done = {p.lineage_id for p in plans if p.finished}
    set_parent_status(client, sweep, lineages=done, status="FINISHED", where="!= 'FINISHED'")


def set_parent_status(client: MlflowClient, sweep: SweepSpec, *, lineages: Collection[str], status: str,
                      where: str) -> None:
    """Set `status` on the parent runs of `lineages` (members of `sweep`) whose current status
    satisfies `where` (an MLflow filter clause on it); one search for them all."""
    for run in search_all(client, f"{sweep_members(sweep.name)} and attributes.status {where}") if lineages else ():
        if run.data.tags.get(f"{TAG}lineage_id") in lineages:
            set_lineage_status(client, run.info.run_id, status=status)
