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
from trainables.ids import parse_lineage_id
from trainables import layout
from trainables.storage import Store, as_store, is_object_store
from trainables.tracking import KIND_LEVEL, LEVEL_METRICS, TAG, search_all, sweep_members, tag_filter

CATALOG_COLUMNS = {
    "checkpoint_id": pl.String, "lineage_id": pl.String, "config_id": pl.String, "level": pl.Int32,
    "model": pl.String, "dataset": pl.String, "seed": pl.Int64, "checkpoint_path": pl.String,
    "spec_json": pl.String, "mlflow_run_id": pl.String,
}


def sweep_lineage_runs(client: MlflowClient, sweep: str) -> list:
    """Parent runs of the lineages that are members of `sweep`."""
    return search_all(client, sweep_members(sweep))


def build_catalog(sweep: str, *, tracking_uri: str, workdir: str | os.PathLike | Store) -> pl.DataFrame:
    """One row per FINISHED level of the sweep's lineages (CATALOG_COLUMNS), sorted by id.

    A level whose checkpoint directory is missing from the workdir is still listed (its path
    points where it should be), so that the analysis reports it rather than silently skipping it.
    """
    client, workdir = MlflowClient(tracking_uri), as_store(workdir)
    lineage_ids = sorted({r.data.tags[f"{TAG}lineage_id"] for r in sweep_lineage_runs(client, sweep)})
    specs = {lid: _stored_spec(workdir, lid) for lid in lineage_ids}
    level_rows, layer_rows, catalog_rows = [], [], []
    for run in _finished_levels(client, set(lineage_ids)):
        tags = run.data.tags
        lid, cid, level = tags[f"{TAG}lineage_id"], tags[f"{TAG}checkpoint_id"], int(tags[f"{TAG}level"])
        stored = LineageCheckpoints(workdir, lid)
        path, uri = _level_location(stored.level_dir(level))
        level_rows.append({"checkpoint_id": cid, "lineage_id": lid, "level": level,
                           **{k: run.data.metrics.get(k) for k in LEVEL_METRICS},
                           "checkpoint_uri": uri, "mlflow_run_id": run.info.run_id})
        layer_rows += _layer_rows(stored, level, cid)
        spec = specs[lid]["spec"]
        catalog_rows.append({"checkpoint_id": cid, "lineage_id": lid, "config_id": parse_lineage_id(lid)[0],
                             "level": level, "model": spec["model"], "dataset": spec["dataset"], "seed": spec["seed"],
                             "checkpoint_path": path, "spec_json": json.dumps(spec, sort_keys=True),
                             "mlflow_run_id": run.info.run_id})
    upsert(workdir, "lineages", rows=[_lineage_row(lid, specs[lid]) for lid in lineage_ids], key=["lineage_id"])
    upsert(workdir, "sweep_lineages", rows=[{"sweep": sweep, "lineage_id": lid} for lid in lineage_ids],
           key=["sweep", "lineage_id"])
    upsert(workdir, "levels", rows=level_rows, key=["checkpoint_id"])
    upsert(workdir, "layers", rows=layer_rows, key=["checkpoint_id", "layer"])
    return pl.DataFrame(catalog_rows, schema=CATALOG_COLUMNS).sort("checkpoint_id")


def _finished_levels(client: MlflowClient, lineage_ids: set[str]) -> list:
    """The FINISHED level runs of `lineage_ids`, oldest first, one per checkpoint (the earliest
    if an old bug made two)."""
    runs = [r for r in search_all(client, tag_filter(kind=KIND_LEVEL))
            if r.info.status == "FINISHED" and r.data.tags.get(f"{TAG}lineage_id") in lineage_ids]
    seen, out = set(), []
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        cid = run.data.tags[f"{TAG}checkpoint_id"]
        if cid not in seen:
            seen.add(cid)
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
