"""The level index: per experiment, one tag per lineage summarising its FINISHED level runs, so
that planning a sweep reads a tag per lineage instead of every level run.

Searching runs costs a tracking server about 1.5 ms per level run (MLflow loads each run's tags,
params and metrics), so reading 200,000 level runs takes minutes; the experiments' tags come
back with one `search_experiments` page. Each experiment keeps, under `impsweep.levels.<lineage
id>`, the run ids and metrics of the lineage's levels logged in it (JSON), written by the
trial after each level it logs (one writer per lineage: the lineage's lock). The tag
`impsweep.level_index` = "1" says that every level run of the experiment is indexed: set when
impsweep creates the experiment, or after `rebuild_index` has read an older experiment's level
runs. While any experiment holding level runs lacks it, readers fall back to the runs.

The runs stay the record; the index is derived from them. A run deleted by hand stays indexed
until `rebuild_index` runs on its experiment: delete the experiment's `impsweep.level_index` tag
and the next `impsweep run` of its sweep indexes it again.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import NamedTuple

from mlflow.tracking import MlflowClient

from trainables.records import stream_runs
from trainables.tracking import KIND_LEVEL, LEVEL_METRICS, TAG, active_experiments, tag_filter

ENTRY_PREFIX = f"{TAG}levels."
COMPLETE_TAG = f"{TAG}level_index"
MAX_ENTRY_CHARS = 20_000  # MLflow's limit on an experiment tag's value; longer lineages stay unindexed


class IndexedLevel(NamedTuple):
    run_id: str
    metrics: dict[str, float]


def entry_key(lineage_id: str) -> str:
    return f"{ENTRY_PREFIX}{lineage_id}"


def entry_value(levels: Mapping[int, IndexedLevel]) -> str | None:
    """The tag value for a lineage's logged `levels` (None if none, or if they do not fit in a tag)."""
    if not levels:
        return None
    order = sorted(levels)
    value = json.dumps({"levels": order, "run_ids": [levels[i].run_id for i in order],
                        "metrics": {k: [levels[i].metrics.get(k) for i in order] for k in LEVEL_METRICS}},
                       separators=(",", ":"))
    return value if len(value) <= MAX_ENTRY_CHARS else None


def parse_entry(value: str) -> dict[int, IndexedLevel]:
    entry = json.loads(value)
    return {level: IndexedLevel(run_id, {k: v[i] for k, v in entry["metrics"].items() if v[i] is not None})
            for i, (level, run_id) in enumerate(zip(entry["levels"], entry["run_ids"]))}


def write_entry(client: MlflowClient, experiment_id: str, *, lineage_id: str,
                levels: Mapping[int, IndexedLevel]) -> None:
    value = entry_value(levels)
    if value is not None:
        client.set_experiment_tag(experiment_id, entry_key(lineage_id), value)


class LevelIndex(NamedTuple):
    """Every experiment's entries: lineage id -> its indexed levels (across experiments) and the
    entries' JSON (in experiment order: a level's metrics come from the oldest experiment that
    has it). `complete`: every experiment holding level runs is indexed, so a lineage without an
    entry has no FINISHED level run."""

    levels: dict[str, frozenset[int]]
    entries: dict[str, list[str]]
    complete: bool

    def lineage(self, lineage_id: str) -> dict[int, IndexedLevel]:
        """The lineage's indexed levels (parsed on demand: the index is held as JSON)."""
        merged: dict[int, IndexedLevel] = {}
        for value in self.entries.get(lineage_id, ()):
            merged = {**parse_entry(value), **merged}  # an older experiment's run of a level wins
        return merged

    def metrics(self, lineage_id: str, level: int) -> dict[str, float]:
        return self.lineage(lineage_id)[level].metrics


def read_index(client: MlflowClient) -> LevelIndex:
    levels: dict[str, frozenset[int]] = {}
    entries: dict[str, list[str]] = {}
    complete = True
    for experiment in sorted(active_experiments(client), key=lambda e: int(e.experiment_id)):
        tags = experiment.tags
        if tags.get(COMPLETE_TAG) != "1" and _holds_level_runs(client, experiment.experiment_id):
            complete = False
        for key, value in tags.items():
            if key.startswith(ENTRY_PREFIX):
                lid = key[len(ENTRY_PREFIX):]
                levels[lid] = levels.get(lid, frozenset()) | frozenset(json.loads(value)["levels"])
                entries.setdefault(lid, []).append(value)
    return LevelIndex(levels, entries, complete)


def _holds_level_runs(client: MlflowClient, experiment_id: str) -> bool:
    return bool(client.search_runs([experiment_id], tag_filter(kind=KIND_LEVEL), max_results=1))


def rebuild_index(client: MlflowClient, experiment_id: str) -> int:
    """Index the FINISHED level runs of an experiment (the earliest where an old bug made two of a
    level), then mark it complete. Returns how many lineages got an entry."""
    query = f"{tag_filter(kind=KIND_LEVEL)} and attributes.status = 'FINISHED'"
    found: dict[str, dict[int, tuple[int, IndexedLevel]]] = {}
    for run in stream_runs(client, query, experiment_ids=[experiment_id]):
        tags = run.data.tags
        lid, level, start = tags[f"{TAG}lineage_id"], int(tags[f"{TAG}level"]), run.info.start_time or 0
        seen = found.setdefault(lid, {}).get(level)
        if seen is None or start < seen[0]:
            found[lid][level] = (start, IndexedLevel(run.info.run_id, dict(run.data.metrics)))
    for lid, levels in found.items():
        write_entry(client, experiment_id, lineage_id=lid,
                    levels={level: indexed for level, (_, indexed) in levels.items()})
    stale = [k for k in client.get_experiment(experiment_id).tags
             if k.startswith(ENTRY_PREFIX) and k[len(ENTRY_PREFIX):] not in found]
    for key in stale:  # lineages whose level runs were deleted since
        client.delete_experiment_tag(experiment_id, key)
    client.set_experiment_tag(experiment_id, COMPLETE_TAG, "1")
    return len(found)
