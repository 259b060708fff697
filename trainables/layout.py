"""The workdir's layout: the one place that names every path under a workdir, as a key relative
to it (what `trainables.storage` stores; the workdir itself may be a folder or an object store).

```
<workdir>/
  mlflow.db, artifacts/            the default MLflow store of a local workdir (SQLite and its artifacts)
  ray/                             Ray Tune's storage (default)
  lineages/<lineage_id>/           spec.json, rewind.pt, progress.pt, stopped.json, .lock
      L00/ L01/ ...                complete levels: state.pt, metrics.json, spec.json
  analysis/                        .lock
      activations/<probe_key>/<checkpoint_id>/<layer>.npy
      activations/index/<probe_rule>/<checkpoint_id>.json      one manifest per checkpoint
      sketches/<probe_key>/<checkpoint_id>/<layer>/<sketch_key>.pt
      sharpness/<sharpness_rule>/<checkpoint_id>.json
  tables/                          lineages/ sweep_lineages/ levels/ layers/   part-0.parquet
                                   neurons/ receptive_fields/ displacements/   part-<digest(checkpoint_id)>.parquet
                                   similarity/measure=<m>/part-<analysis_id>-<tile_id>.parquet
  reports/<sweep>/                 index.html and its figures
```
A checkpoint id (`<lineage_id>/L<NN>`) is itself two key segments.
"""
from __future__ import annotations

import re

from trainables.ids import digest

LEVEL_STATE_FILE = "state.pt"  # model, masks, optimizer, progress, training mode, RNG
LEVEL_METRICS_FILE = "metrics.json"  # metrics, per-layer sparsity, precision, digest of state.pt
SPEC_FILE = "spec.json"
CATALOG_FILE = "part-0.parquet"  # the one file of each small catalog table
LINEAGES = "lineages"
ANALYSIS = "analysis"
ACTIVATIONS = f"{ANALYSIS}/activations"
TABLES = "tables"
ANALYSIS_LOCK = f"{ANALYSIS}/.lock"  # held by the one analysis of the workdir that runs at a time
MLFLOW_DB = "mlflow.db"  # the default tracking store (SQLite) of a local workdir
MLFLOW_ARTIFACTS = "artifacts"  # its artifacts
RAY_STORAGE = "ray"  # Ray Tune's default storage
_LEVEL_NAME = re.compile(r"L(\d+)")


# -- lineages and their checkpoints -----------------------------------------------------------
def lineage_dir(lineage_id: str) -> str:
    return f"{LINEAGES}/{lineage_id}"


def lineage_lock(lineage_id: str) -> str:
    """Held by whoever trains the lineage: one writer at a time."""
    return f"{lineage_dir(lineage_id)}/.lock"


def lineage_spec(lineage_id: str) -> str:
    return f"{lineage_dir(lineage_id)}/{SPEC_FILE}"


def rewind_point(lineage_id: str) -> str:
    return f"{lineage_dir(lineage_id)}/rewind.pt"


def progress(lineage_id: str) -> str:
    """The newest in-level resume point."""
    return f"{lineage_dir(lineage_id)}/progress.pt"


def stopped(lineage_id: str) -> str:
    """The record of a lineage its stopping rule ended early."""
    return f"{lineage_dir(lineage_id)}/stopped.json"


def level_dir(lineage_id: str, level: int) -> str:
    return f"{lineage_dir(lineage_id)}/L{level:02d}"


def level_of(folder_name: str) -> int | None:
    """The level a lineage's child folder holds (`L03` -> 3), None for any other name."""
    match = _LEVEL_NAME.fullmatch(folder_name)
    return int(match.group(1)) if match else None


# -- the analysis stage -----------------------------------------------------------------------
def activation_file(probe_key: str, checkpoint_id: str, *, layer: str) -> str:
    return f"{ACTIVATIONS}/{probe_key}/{checkpoint_id}/{layer}.npy"


def activation_index(probe_rule: str, checkpoint_id: str) -> str:
    """The manifest of a checkpoint's activation files, per rule that sizes probe sets."""
    return f"{ACTIVATIONS}/index/{probe_rule}/{checkpoint_id}.json"


def sketch_file(activation: str, sketch_key: str) -> str:
    """Where the sketch `sketch_key` of an activation file (a key) is stored: beside its
    activation's place in the tree (an activation elsewhere gets a folder of its own)."""
    stem = activation[: -len(".npy")] if activation.endswith(".npy") else activation
    if stem.startswith(ACTIVATIONS + "/"):
        folder = stem[len(ACTIVATIONS) + 1:]
    else:
        folder = f"other/{digest(activation)}"
    return f"{ANALYSIS}/sketches/{folder}/{sketch_key}.pt"


def sharpness_file(sharpness_rule: str, checkpoint_id: str) -> str:
    return f"{ANALYSIS}/sharpness/{sharpness_rule}/{checkpoint_id}.json"


# -- tables -----------------------------------------------------------------------------------
def table_dir(name: str) -> str:
    return f"{TABLES}/{name}"


def catalog_table_file(name: str) -> str:
    """The single file of a small catalog table (lineages, sweep_lineages, levels, layers)."""
    return f"{table_dir(name)}/{CATALOG_FILE}"


def checkpoint_table_file(name: str, checkpoint_id: str) -> str:
    """A per-checkpoint table's file (neurons, receptive_fields, displacements)."""
    return f"{table_dir(name)}/part-{digest(checkpoint_id)}.parquet"


def similarity_dir(measure: str) -> str:
    """The Hive partition of one measure."""
    return f"{table_dir('similarity')}/measure={measure}"


def similarity_file(measure: str, *, analysis_id: str, tile_id: str) -> str:
    """The file of one tile of pairs."""
    return f"{similarity_dir(measure)}/part-{analysis_id}-{tile_id}.parquet"


# -- reports ----------------------------------------------------------------------------------
def report_dir(sweep: str) -> str:
    return f"reports/{sweep}"
