"""The workdir's layout: the one place that names every path under a workdir.

```
<workdir>/
  mlflow.db, artifacts/            the default MLflow store (SQLite and its artifacts)
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
A checkpoint id (`<lineage_id>/L<NN>`) is itself two path segments. How the files are written
(atomically, under locks) is `trainables.storage`'s business.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from trainables.ids import digest

LEVEL_STATE_FILE = "state.pt"  # model, masks, optimizer, progress, training mode, RNG
LEVEL_METRICS_FILE = "metrics.json"  # metrics, per-layer sparsity, precision
SPEC_FILE = "spec.json"
CATALOG_FILE = "part-0.parquet"  # the one file of each small catalog table
_LEVEL_NAME = re.compile(r"L(\d+)")


@dataclass(frozen=True)
class Layout:
    """Paths under one workdir (`root`: a local path or a shared mount)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # a str or PathLike is welcome too

    def relative(self, path: str | os.PathLike) -> str:
        """`path` (under the workdir) as the workdir-relative POSIX path that records store, so
        that a workdir can be moved or copied. Raises ValueError for a path outside it."""
        path, root = Path(path), self.root
        if path.is_absolute() != root.is_absolute():
            path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
        return path.relative_to(root).as_posix()

    def resolve(self, stored: str | os.PathLike) -> Path:
        """The path a record stores (`relative`), under this workdir (an absolute one as it is)."""
        return self.root / stored

    # -- lineages and their checkpoints -------------------------------------------------------
    @property
    def lineages_dir(self) -> Path:
        return self.root / "lineages"

    def lineage_dir(self, lineage_id: str) -> Path:
        return self.lineages_dir / lineage_id

    def lineage_lock(self, lineage_id: str) -> Path:
        """Held by whoever trains the lineage: one writer at a time."""
        return self.lineage_dir(lineage_id) / ".lock"

    def lineage_spec(self, lineage_id: str) -> Path:
        return self.lineage_dir(lineage_id) / SPEC_FILE

    def rewind_point(self, lineage_id: str) -> Path:
        return self.lineage_dir(lineage_id) / "rewind.pt"

    def progress(self, lineage_id: str) -> Path:
        """The newest in-level resume point."""
        return self.lineage_dir(lineage_id) / "progress.pt"

    def stopped(self, lineage_id: str) -> Path:
        """The record of a lineage its stopping rule ended early."""
        return self.lineage_dir(lineage_id) / "stopped.json"

    def level_dir(self, lineage_id: str, level: int) -> Path:
        return self.lineage_dir(lineage_id) / f"L{level:02d}"

    @staticmethod
    def level_of(folder_name: str) -> int | None:
        """The level a lineage's child folder holds (`L03` -> 3), None for any other name."""
        match = _LEVEL_NAME.fullmatch(folder_name)
        return int(match.group(1)) if match else None

    # -- the analysis stage ---------------------------------------------------------------------
    @property
    def analysis_dir(self) -> Path:
        return self.root / "analysis"

    @property
    def analysis_lock(self) -> Path:
        """Held by the one analysis of the workdir that runs at a time."""
        return self.analysis_dir / ".lock"

    @property
    def activations_dir(self) -> Path:
        return self.analysis_dir / "activations"

    def activation_file(self, probe_key: str, checkpoint_id: str, *, layer: str) -> Path:
        return self.activations_dir / probe_key / checkpoint_id / f"{layer}.npy"

    def activation_index(self, probe_rule: str, checkpoint_id: str) -> Path:
        """The manifest of a checkpoint's activation files, per rule that sizes probe sets."""
        return self.activations_dir / "index" / probe_rule / f"{checkpoint_id}.json"

    def sketch_file(self, activation: str | os.PathLike, sketch_key: str) -> Path:
        """Where the sketch `sketch_key` of an activation file is stored: beside its activation's
        place in the tree (activations elsewhere get a folder per file)."""
        activation = Path(activation)
        try:
            folder = activation.with_suffix("").relative_to(self.activations_dir)
        except ValueError:
            folder = Path("other") / digest(str(activation))
        return self.analysis_dir / "sketches" / folder / f"{sketch_key}.pt"

    def sharpness_file(self, sharpness_rule: str, checkpoint_id: str) -> Path:
        return self.analysis_dir / "sharpness" / sharpness_rule / f"{checkpoint_id}.json"

    # -- tables ---------------------------------------------------------------------------------
    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    def table_dir(self, name: str) -> Path:
        return self.tables_dir / name

    def catalog_table_file(self, name: str) -> Path:
        """The single file of a small catalog table (lineages, sweep_lineages, levels, layers)."""
        return self.table_dir(name) / CATALOG_FILE

    def checkpoint_table_file(self, name: str, checkpoint_id: str) -> Path:
        """A per-checkpoint table's file (neurons, receptive_fields, displacements)."""
        return self.table_dir(name) / f"part-{digest(checkpoint_id)}.parquet"

    def similarity_dir(self, measure: str) -> Path:
        """The Hive partition of one measure."""
        return self.table_dir("similarity") / f"measure={measure}"

    def similarity_file(self, measure: str, *, analysis_id: str, tile_id: str) -> Path:
        """The file of one tile of pairs."""
        return self.similarity_dir(measure) / f"part-{analysis_id}-{tile_id}.parquet"

    # -- reports, tracking and Ray ----------------------------------------------------------------
    def report_dir(self, sweep: str) -> Path:
        return self.root / "reports" / sweep

    @property
    def mlflow_db(self) -> Path:
        """The default tracking store (SQLite)."""
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        """Artifacts of the default tracking store."""
        return self.root / "artifacts"

    @property
    def ray_storage(self) -> Path:
        """Ray Tune's default storage."""
        return self.root / "ray"
