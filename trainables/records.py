"""Reading the MLflow record at scale: searches filtered on the server (experiments, kind,
status, sweep membership), streamed page by page and kept as compact tuples.

A lineage's parent run lives in whichever experiment first ran it, and each of its level runs in
the experiment of the sweep that trained that level (an experiment is named after its sweep);
every such sweep tagged the parent run as a member first. So the level runs of a set of
lineages lie in the experiments of their parent runs and of the sweeps those parent runs name:
no search needs to read the runs of unrelated experiments.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from typing import NamedTuple

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from trainables.tracking import (
    KIND_LEVEL, KIND_LINEAGE, TAG, active_experiments, all_experiment_ids, sweep_members, tag_filter,
)

PAGE_SIZE = 1000  # runs per search page: one page of Run objects is all the driver holds at once
_SWEEP_PREFIX = f"{TAG}sweep."


class ParentRun(NamedTuple):
    """What the driver keeps of a lineage's parent run."""

    run_id: str
    lineage_id: str
    experiment_id: str
    start_time: int
    status: str
    sweeps: tuple[str, ...]  # the sweeps it is a member of
    tags: dict[str, str]  # its `impsweep.*` tags besides membership


class LevelRun(NamedTuple):
    """What the driver keeps of a FINISHED level run."""

    run_id: str
    lineage_id: str
    level: int
    checkpoint_id: str
    start_time: int
    metrics: dict[str, float]


def stream_runs(client: MlflowClient, filter_string: str, *, experiment_ids: list[str] | None = None,
                page_size: int = PAGE_SIZE) -> Iterator[Run]:
    """Every run matching `filter_string` in MLflow's order (newest first), one page held at a
    time. `experiment_ids` None: every active experiment."""
    ids = all_experiment_ids(client) if experiment_ids is None else list(experiment_ids)
    token = None
    while ids:
        page = client.search_runs(ids, filter_string, max_results=page_size, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def parent_run(run: Run) -> ParentRun:
    tags = run.data.tags
    sweeps = tuple(sorted(k[len(_SWEEP_PREFIX):] for k, v in tags.items() if k.startswith(_SWEEP_PREFIX) and v == "1"))
    own = {k: v for k, v in tags.items() if k.startswith(TAG) and not k.startswith(_SWEEP_PREFIX)}
    return ParentRun(run.info.run_id, tags[f"{TAG}lineage_id"], run.info.experiment_id, run.info.start_time or 0,
                     run.info.status, sweeps, own)


def parent_runs(client: MlflowClient, *, sweep: str | None = None,
                lineage_ids: Collection[str] | None = None) -> list[ParentRun]:
    """The parent runs that are members of `sweep` (all parent runs if None), in every
    experiment, newest first; with `lineage_ids`, only those of these lineages."""
    query = sweep_members(sweep) if sweep is not None else tag_filter(kind=KIND_LINEAGE)
    found = (parent_run(run) for run in stream_runs(client, query))
    return [p for p in found if lineage_ids is None or p.lineage_id in lineage_ids]


def lineage_parent_runs(client: MlflowClient, sweep: str, *, lineage_ids: Collection[str]) -> list[ParentRun]:
    """The parent runs of `lineage_ids`: first those tagged as members of `sweep` (the narrow
    search, enough once the sweep has run), then, for lineages it did not find (a sweep not
    run yet, whose lineages another sweep may have run), every parent run."""
    wanted = set(lineage_ids)
    found = parent_runs(client, sweep=sweep, lineage_ids=wanted)
    missing = wanted - {p.lineage_id for p in found}
    if missing:
        seen = {p.run_id for p in found}
        found += [p for p in parent_runs(client, lineage_ids=missing) if p.run_id not in seen]
    return found


def level_experiments(client: MlflowClient, sweep: str, *, lineage_ids: Collection[str],
                      parents: Iterable[ParentRun] | None = None) -> list[str]:
    """The active experiments that can hold level runs of `lineage_ids`: those of their parent
    runs (`parents`, searched if None) and of the sweeps these are members of (`sweep`'s own
    included). Every active experiment when the store holds no experiment but `sweep`'s and
    MLflow's default one (then no parent search is worth its cost)."""
    active = {e.name: e.experiment_id for e in active_experiments(client)}
    if set(active) <= {sweep, "Default"}:
        return sorted(active.values(), key=int)
    names, ids = {sweep}, set()
    for parent in lineage_parent_runs(client, sweep, lineage_ids=lineage_ids) if parents is None else parents:
        ids.add(parent.experiment_id)
        names.update(parent.sweeps)
    ids = {i for i in ids if i in active.values()} | {active[name] for name in names if name in active}
    return sorted(ids, key=int)


def finished_level_runs(client: MlflowClient, lineage_ids: Collection[str], *,
                        experiment_ids: list[str]) -> Iterator[LevelRun]:
    """The FINISHED level runs of `lineage_ids` in `experiment_ids`, in MLflow's order (newest
    first; among runs started in the same millisecond, by run id). Duplicates (an old bug made
    two runs of a level) are all yielded: the caller applies its rule."""
    query = f"{tag_filter(kind=KIND_LEVEL)} and attributes.status = 'FINISHED'"
    lid_tag, level_tag, cid_tag = f"{TAG}lineage_id", f"{TAG}level", f"{TAG}checkpoint_id"
    for run in stream_runs(client, query, experiment_ids=experiment_ids):
        tags = run.data.tags
        lid = tags.get(lid_tag)
        if lid in lineage_ids:
            yield LevelRun(run.info.run_id, lid, int(tags[level_tag]), tags[cid_tag], run.info.start_time or 0,
                           run.data.metrics)
