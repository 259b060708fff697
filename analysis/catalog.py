"""The catalog: a sweep's checkpoints, found in MLflow by tags and on disk in the workdir.

Writes the catalog tables (lineages, sweep_lineages, levels, layers) as a side effect.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
from mlflow.tracking import MlflowClient

from analysis.tables import upsert
from trainables.checkpoints import LineageCheckpoints
from trainables.ids import checkpoint_id, parse_lineage_id
from trainables import layout
from trainables.level_index import read_index
from trainables.storage import Store, as_store, is_object_store
from trainables.records import LevelRun, ParentRun, finished_level_runs, level_experiments, parent_runs
from trainables.tracking import LEVEL_METRICS

CATALOG_COLUMNS = {
    "checkpoint_id": pl.String, "lineage_id": pl.String, "config_id": pl.String, "level": pl.Int32,
    "model": pl.String, "dataset": pl.String, "seed": pl.Int64, "checkpoint_path": pl.String,
    "spec_json": pl.String, "mlflow_run_id": pl.String,
}


def sweep_lineage_runs(client: MlflowClient, sweep: str) -> list[ParentRun]:
    """Parent runs of the lineages that are members of `sweep`."""
    return parent_runs(client, sweep=sweep)


def build_catalog(sweep: str, *, tracking_uri: str, workdir: str | os.PathLike | Store) -> pl.DataFrame:
    """One row per FINISHED level of the sweep's lineages (CATALOG_COLUMNS), sorted by id.

    A level whose checkpoint directory is missing from the workdir is still listed (its path
    points where it should be), so that the analysis reports it rather than silently skipping it.
    """
    client, workdir = MlflowClient(tracking_uri), as_store(workdir)
    parents = sweep_lineage_runs(client, sweep)
    lineage_ids = sorted({p.lineage_id for p in parents})
    specs = {lid: _stored_spec(workdir, lid) for lid in lineage_ids}
    level_rows, layer_rows, catalog_rows, spec_json = [], [], [], {}
    for run in _finished_levels(client, sweep, parents):
        lid, cid, level = run.lineage_id, run.checkpoint_id, run.level
        stored = LineageCheckpoints(workdir, lid)
        path, uri = _level_location(stored.level_dir(level))
        level_rows.append({"checkpoint_id": cid, "lineage_id": lid, "level": level,
                           **{k: run.metrics.get(k) for k in LEVEL_METRICS},
                           "checkpoint_uri": uri, "mlflow_run_id": run.run_id})
        layer_rows += _layer_rows(stored, level, cid)
        spec = specs[lid]["spec"]
        if lid not in spec_json:  # one string per lineage, shared by its levels' rows
            spec_json[lid] = json.dumps(spec, sort_keys=True)
        catalog_rows.append({"checkpoint_id": cid, "lineage_id": lid, "config_id": parse_lineage_id(lid)[0],
                             "level": level, "model": spec["model"], "dataset": spec["dataset"], "seed": spec["seed"],
                             "checkpoint_path": path, "spec_json": spec_json[lid],
                             "mlflow_run_id": run.run_id})
    upsert(workdir, "lineages", rows=[_lineage_row(lid, specs[lid]) for lid in lineage_ids], key=["lineage_id"])
    upsert(workdir, "sweep_lineages", rows=[{"sweep": sweep, "lineage_id": lid} for lid in lineage_ids],
           key=["sweep", "lineage_id"])
    upsert(workdir, "levels", rows=level_rows, key=["checkpoint_id"])
    upsert(workdir, "layers", rows=layer_rows, key=["checkpoint_id", "layer"])
    return pl.DataFrame(catalog_rows, schema=CATALOG_COLUMNS).sort("checkpoint_id")


def _finished_levels(client: MlflowClient, sweep: str, parents: list[ParentRun]) -> list[LevelRun]:
    """The FINISHED level runs of the lineages of `parents`, one per checkpoint (the earliest if
    an old bug made two): from the experiments' level index when it is complete
    (`trainables.level_index`), else from the runs, searched only in the experiments that can
    hold them."""
    lineage_ids = {p.lineage_id for p in parents}
    if not lineage_ids:
        return []
    index = read_index(client)
    if index.complete:
        return [LevelRun(indexed.run_id, lid, level, checkpoint_id(lid, level), 0, indexed.metrics)
                for lid in sorted(lineage_ids) for level, indexed in sorted(index.lineage(lid).items())]
    experiments = level_experiments(client, sweep, lineage_ids=lineage_ids, parents=parents)
    runs = finished_level_runs(client, lineage_ids, experiment_ids=experiments)
    seen, out = set(), []
    for run in sorted(runs, key=lambda r: r.start_time):
        if run.checkpoint_id not in seen:
            seen.add(run.checkpoint_id)
            out.append(run)
    return out


def _lineage_row(lid: str, stored: dict) -> dict:
    spec = stored["spec"]
    return {"lineage_id": lid, "config_id": parse_lineage_id(lid)[0], "model": spec["model"],
            "dataset": spec["dataset"], "seed": spec["seed"], "schedule": spec["prune"]["schedule"],
            "rewind": spec["prune"]["rewind"], "rate": spec["prune"]["rate"],
            "spec_json": json.dumps(stored["identity"], sort_keys=True)}


def _level_location(location: str) -> tuple[str, str]:
    """(path, URI) of a level folder: an absolute local path and its file:// URI, or an
    object-store URI twice."""
    if is_object_store(location):
        return location, location
    path = Path(location).resolve()
    return str(path), path.as_uri()


def _stored_spec(store: Store, lid: str) -> dict:
    stored = LineageCheckpoints(store, lid).stored_spec()
    if stored is None:
        raise FileNotFoundError(f"lineage {lid}: {store.uri(layout.lineage_spec(lid))} is missing; the workdir "
                                "does not hold this lineage")
    return stored


def _layer_rows(stored: LineageCheckpoints, level: int, cid: str) -> list[dict]:
    if not stored.is_complete(level):
        return []
    return [{"checkpoint_id": cid, "layer": l.layer, "n_params": l.n_params, "n_zero": l.n_zero,
             "sparsity": l.sparsity} for l in stored.read_record(level).layers]
