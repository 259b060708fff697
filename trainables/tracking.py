"""MLflow as the record: a parent run per lineage, a child run per level, found by tags.

Every function here is idempotent: re-running or resuming finds and continues the existing runs
instead of creating duplicates. Runs are never looked up by name, and no global active run is
used (an `MlflowClient` and run ids are passed explicitly).
"""
from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from trainables.artifacts import DEFAULT_CHECKPOINT_ARTIFACTS, check_policy, log_checkpoint
from trainables.ids import config_id, lineage_id
from trainables.specs import RUNTIME_FIELDS, LineageSpec

TAG = "impsweep."
KIND_LINEAGE, KIND_LEVEL = "lineage", "level"
LEVEL_METRICS = ("sparsity", "sparsity_all", "test_acc", "test_loss", "train_loss", "epochs", "wall_s")
CHECKPOINT_URI_TAG = f"{TAG}checkpoint_uri"  # a level run's committed level folder (path or URI)
_MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
GIT_COMMIT_TAG = "mlflow.source.git.commit"
_GIT_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class TrackingRef:
    """Where a lineage is recorded; plain strings so that it crosses process boundaries."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep: str
    code_rev: str
    checkpoint_artifacts: str = DEFAULT_CHECKPOINT_ARTIFACTS  # `trainables.artifacts`: weights, full or none

    def __post_init__(self) -> None:
        check_policy(self.checkpoint_artifacts)


def tag_filter(**tags: str) -> str:
    """MLflow filter string over `impsweep.*` tags (keys need backticks: they contain dots)."""
    return " and ".join(f"tags.`{TAG}{k}` = '{v}'" for k, v in tags.items())


def sweep_tag(sweep: str) -> str:
    """Tag that makes a lineage's parent run a member of `sweep` (value "1")."""
    return f"{TAG}sweep.{sweep}"


def sweep_members(sweep: str) -> str:
    """MLflow filter string for the parent runs of `sweep`'s lineages."""
    return f"{tag_filter(kind=KIND_LINEAGE)} and tags.`{sweep_tag(sweep)}` = '1'"


def earliest(runs: list) -> Any:
    """The run that started first: the one that counts when an old bug made two."""
    return min(runs, key=lambda r: r.info.start_time or 0)


def active_experiments(client: MlflowClient) -> list[Any]:
    """Every active experiment, following pagination."""
    experiments, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        experiments += page
        token = page.token
        if not token:
            return experiments


def all_experiment_ids(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in active_experiments(client)]


def search_all(client: MlflowClient, filter_string: str, *, experiment_ids: list[str] | None = None) -> list:
    """Every run matching `filter_string`, following pagination."""
    ids = experiment_ids if experiment_ids is not None else all_experiment_ids(client)
    runs, token = [], None
    while ids:
        page = client.search_runs(ids, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def ensure_experiment(client: MlflowClient, name: str, *, artifact_location: str | None = None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"lr": 0.1}} -> {"train.lr": "0.1"} (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def lineage_tags(spec: LineageSpec, code_rev: str) -> dict[str, str]:
    """Tags of a lineage's runs. A `code_rev` that names a git commit also goes to MLflow's own
    `mlflow.source.git.commit` (without its "-dirty" marker), which the UI shows as the source."""
    tags = {
        f"{TAG}kind": KIND_LINEAGE,
        f"{TAG}lineage_id": lineage_id(spec),
        f"{TAG}config_id": config_id(spec),
        f"{TAG}seed": str(spec.seed),
        f"{TAG}model": spec.model,
        f"{TAG}dataset": spec.dataset,
        f"{TAG}schedule": spec.prune.schedule,
        f"{TAG}rewind": spec.prune.rewind,
        f"{TAG}code_rev": code_rev,
    }
    commit = code_rev.removesuffix("-dirty")
    if _GIT_SHA.fullmatch(commit):
        tags[GIT_COMMIT_TAG] = commit
    return tags


def parent_params(spec: LineageSpec) -> list[Param]:
    """A parent run's params: the flattened identity spec (defaults included, so the UI shows
    them all), each value cut to MLflow's 6,000 characters."""
    full = {k: v for k, v in spec.model_dump(mode="json").items() if k not in RUNTIME_FIELDS}
    return [Param(k, v[:6000]) for k, v in sorted(flatten(full).items())]


def ensure_parent_run(
    client: MlflowClient, spec: LineageSpec, *, experiment_id: str, sweep: str, code_rev: str
) -> str:
    """The lineage's parent run (created once, in whichever experiment first ran it), tagged as a
    member of `sweep`. Returns its run id."""
    found = search_all(client, tag_filter(kind=KIND_LINEAGE, lineage_id=lineage_id(spec)))
    return _ensure_parent(client, spec, experiment_id=experiment_id, found=found, sweep=sweep, code_rev=code_rev)


def ensure_parent_runs(
    client: MlflowClient, specs: list[LineageSpec], *, experiment_id: str, sweep: str, code_rev: str
) -> dict[str, str]:
    """`ensure_parent_run` for many lineages: one streamed search for the parent runs that exist
    (a search per lineage costs more than creating its run), then only the missing ones are
    created, three calls each (MLflow 3.17 has no call that creates several runs, and requests
    sent 8 at a time to a one-worker server saved nothing: 86 against 80 ms a run). Returns
    lineage id -> parent run id."""
    from trainables.records import parent_runs

    wanted = {lineage_id(spec): spec for spec in specs}
    found: dict[str, list] = {}
    for parent in parent_runs(client, lineage_ids=wanted):
        found.setdefault(parent.lineage_id, []).append(parent)
    out = {}
    for lid, parents in found.items():
        run = min(parents, key=lambda p: (p.start_time, p.run_id))  # `earliest`, ties as MLflow lists them
        if sweep not in run.sweeps:
            client.set_tag(run.run_id, sweep_tag(sweep), "1")
        out[lid] = run.run_id
    for lid, spec in wanted.items():
        if lid not in found:
            out[lid] = _create_parent(client, spec, experiment_id=experiment_id, sweep=sweep, code_rev=code_rev)
    return {lid: out[lid] for lid in wanted}


def _ensure_parent(client: MlflowClient, spec: LineageSpec, *, experiment_id: str, found: list,
                   sweep: str, code_rev: str) -> str:
    """The earliest of the lineage's `found` parent runs, or a new one; tagged as a member of
    `sweep`."""
    member = sweep_tag(sweep)
    if found:
        run = earliest(found)
        if run.data.tags.get(member) != "1":
            client.set_tag(run.info.run_id, member, "1")
        return run.info.run_id
    return _create_parent(client, spec, experiment_id=experiment_id, sweep=sweep, code_rev=code_rev)


def _create_parent(client: MlflowClient, spec: LineageSpec, *, experiment_id: str, sweep: str, code_rev: str) -> str:
    """A new parent run (SCHEDULED) for `spec`: three calls when it has at most 100 params."""
    lid = lineage_id(spec)
    run_id = client.create_run(experiment_id, run_name=lid,
                               tags={**lineage_tags(spec, code_rev), sweep_tag(sweep): "1"}).info.run_id
    params = parent_params(spec)
    for i in range(0, len(params), _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i : i + _MAX_PARAMS_PER_BATCH])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.SCHEDULED))
    return run_id


def find_level_runs(client: MlflowClient, lineage: str, *,
                    experiment_ids: list[str] | None = None) -> dict[int, Any]:
    """Child runs of a lineage by level (the earliest one if an old bug made two)."""
    runs = search_all(client, tag_filter(kind=KIND_LEVEL, lineage_id=lineage), experiment_ids=experiment_ids)
    by_level: dict[int, Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):
        by_level[int(run.data.tags[f"{TAG}level"])] = run
    return by_level


def log_level(client: MlflowClient, result, *, ref: TrackingRef, tags: Mapping[str, str],
              known: Mapping[int, Any] | None = None) -> str:
    """Record one level (a `trainables.lineage.LevelResult`) as a FINISHED child run with its
    metrics, the level's URI as tag `impsweep.checkpoint_uri`, and the artifacts
    `ref.checkpoint_artifacts` asks for (`trainables.artifacts`). A level already FINISHED is
    left alone.

    known: the lineage's level runs as `find_level_runs` returned them at its first level, read
        under the lineage's lock (read earlier, it misses the runs of another trainer that held
        the lock meanwhile); saves one search per level (SQLite searches cost seconds on a busy store).
    """
    if known is None:
        known = find_level_runs(client, result.lineage_id, experiment_ids=[ref.experiment_id])
    existing = known.get(result.level)
    if existing is not None and existing.info.status == "FINISHED":
        return existing.info.run_id
    if existing is None:
        child_tags = {
            **tags, f"{TAG}kind": KIND_LEVEL, f"{TAG}level": str(result.level),
            f"{TAG}checkpoint_id": result.checkpoint_id, "mlflow.parentRunId": ref.parent_run_id,
        }
        if result.precision:
            child_tags[f"{TAG}precision"] = result.precision
        info = client.create_run(ref.experiment_id, run_name=result.checkpoint_id, tags=child_tags).info
    else:
        info = existing.info
    run_id = info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(result.metrics[k]), now, 0) for k in LEVEL_METRICS]
    client.log_batch(run_id, metrics=metrics, tags=[RunTag(CHECKPOINT_URI_TAG, result.checkpoint_dir)])
    log_checkpoint(client, result, run_id=run_id, artifact_uri=info.artifact_uri, policy=ref.checkpoint_artifacts)
    # The parent's metrics use the level as step, so the UI charts accuracy against level.
    client.log_batch(ref.parent_run_id, metrics=[Metric(k, float(result.metrics[k]), now, result.level)
                                                 for k in LEVEL_METRICS])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def stopped_tag(sweep: str) -> str:
    """Tag of a lineage's parent run: the last level it completed before `sweep`'s scheduler
    (ASHA) stopped it. Per sweep: another sweep sharing the lineage may run it to the end."""
    return f"{TAG}stopped.{sweep}"


def mark_stopped(client: MlflowClient, lineage: str, *, sweep: str, level: int) -> str | None:
    """Record that `sweep`'s scheduler stopped `lineage` after `level` and close its parent run
    (FINISHED: it ended by decision, not by failure). Returns the parent run id (None if the
    lineage has none)."""
    runs = search_all(client, tag_filter(kind=KIND_LINEAGE, lineage_id=lineage))
    if not runs:
        return None
    run_id = earliest(runs).info.run_id
    client.set_tag(run_id, stopped_tag(sweep), str(level))
    set_lineage_status(client, run_id, status="FINISHED")
    return run_id


def set_lineage_status(client: MlflowClient, parent_run_id: str, *, status: str) -> None:
    """RUNNING while a trial works on the lineage, FINISHED or FAILED at the end."""
    if status == "RUNNING":
        client.update_run(parent_run_id, status="RUNNING")
    else:
        client.set_terminated(parent_run_id, status)

