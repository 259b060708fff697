"""The catalog: a sweep's checkpoints, found in MLflow by tags and on disk in the workdir.

Writes the catalog tables (lineages, sweep_lineages, levels, layers) as a side effect.
"""
from __future__ import annotations

import json
import os

import polars as pl
from mlflow.tracking import MlflowClient

from analysis.tables import upsert
from trainables.checkpoints import LineageCheckpoints
from trainables.ids import parse_lineage_id
from trainables.layout import Layout
from trainables.tracking import KIND_LEVEL, TAG, search_all, sweep_members, tag_filter

CATALOG_COLUMNS = {
    "checkpoint_id": pl.String, "lineage_id": pl.String, "config_id": pl.String, "level": pl.Int32,
    "model": pl.String, "dataset": pl.String, "seed": pl.Int64, "checkpoint_path": pl.String,
    "spec_json": pl.String, "mlflow_run_id": pl.String,
}


def sweep_lineage_runs(client: MlflowClient, sweep: str) -> list:
    """Parent runs of the lineages that are members of `sweep`."""
    return search_all(client, sweep_members(sweep))


def build_catalog(sweep: str, *, tracking_uri: str, workdir: str | os.PathLike) -> pl.DataFrame:
    """One row per FINISHED level of the sweep's lineages (CATALOG_COLUMNS), sorted by id.

    A level whose checkpoint directory is missing from the workdir is still listed (its path
    points where it should be), so that the analysis reports it rather than silently skipping it.
    """
    client = MlflowClient(tracking_uri)
    parents = sweep_lineage_runs(client, sweep)
    lineage_ids = sorted({r.data.tags[f"{TAG}lineage_id"] for r in parents})
    wanted = set(lineage_ids)
    levels = [
        r for r in search_all(client, tag_filter(kind=KIND_LEVEL))
        if r.info.status == "FINISHED" and r.data.tags.get(f"{TAG}lineage_id") in wanted
    ]
    lineage_rows, level_rows, layer_rows, catalog_rows = [], [], [], []
    specs = {lid: _stored_spec(workdir, lid) for lid in lineage_ids}
    for lid in lineage_ids:
        spec = specs[lid]["spec"]
        lineage_rows.append({
            "lineage_id": lid, "config_id": parse_lineage_id(lid)[0], "model": spec["model"],
            "dataset": spec["dataset"], "seed": spec["seed"], "schedule": spec["prune"]["schedule"],
            "rewind": spec["prune"]["rewind"], "rate": spec["prune"]["rate"],
            "spec_json": json.dumps(specs[lid]["identity"], sort_keys=True),
        })
    seen = set()
    for run in sorted(levels, key=lambda r: r.info.start_time or 0):
        tags, lid = run.data.tags, run.data.tags[f"{TAG}lineage_id"]
        cid, level = tags[f"{TAG}checkpoint_id"], int(tags[f"{TAG}level"])
        if cid in seen:
            continue
        seen.add(cid)
        stored = LineageCheckpoints(workdir, lid)
        path = stored.level_dir(level)
        m = run.data.metrics
        level_rows.append({
            "checkpoint_id": cid, "lineage_id": lid, "level": level,
            **{k: m.get(k) for k in ("sparsity", "sparsity_all", "test_acc", "test_loss", "train_loss",
                                     "epochs", "wall_s")},
            "checkpoint_uri": path.resolve().as_uri(), "mlflow_run_id": run.info.run_id,
        })
        layer_rows += _layer_rows(stored, level, cid)
        spec = specs[lid]["spec"]
        catalog_rows.append({
            "checkpoint_id": cid, "lineage_id": lid, "config_id": parse_lineage_id(lid)[0], "level": level,
            "model": spec["model"], "dataset": spec["dataset"], "seed": spec["seed"],
            "checkpoint_path": str(path.resolve()), "spec_json": json.dumps(spec, sort_keys=True),
            "mlflow_run_id": run.info.run_id,
        })
    upsert(workdir, "lineages", rows=lineage_rows, key=["lineage_id"])
    upsert(workdir, "sweep_lineages", rows=[{"sweep": sweep, "lineage_id": lid} for lid in lineage_ids],
           key=["sweep", "lineage_id"])
    upsert(workdir, "levels", rows=level_rows, key=["checkpoint_id"])
    upsert(workdir, "layers", rows=layer_rows, key=["checkpoint_id", "layer"])
    return pl.DataFrame(catalog_rows, schema=CATALOG_COLUMNS).sort("checkpoint_id")


def _stored_spec(workdir: str | os.PathLike, lid: str) -> dict:
    stored = LineageCheckpoints(workdir, lid).stored_spec()
    if stored is None:
        raise FileNotFoundError(f"lineage {lid}: {Layout(workdir).lineage_spec(lid)} is missing; the workdir "
                                "does not hold this lineage")
    return stored


def _layer_rows(stored: LineageCheckpoints, level: int, cid: str) -> list[dict]:
    if not stored.is_complete(level):
        return []
    return [{"checkpoint_id": cid, "layer": l.layer, "n_params": l.n_params, "n_zero": l.n_zero,
             "sparsity": l.sparsity} for l in stored.read_record(level).layers]
