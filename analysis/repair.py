"""Damage repaired before the tables are read or grown: table files that cannot be read are set
aside (`<name>.corrupt`), so that what they held is computed again, and similarity tiles holding
pairs whose activation file could not be read are dropped, with the activation manifests of those
checkpoints, so that the activations are extracted again and the pairs recomputed."""
from __future__ import annotations

import os

import polars as pl
import pyarrow.parquet as pq

from analysis.extract import products
from analysis.specs import AnalysisSpec
from trainables import storage
from trainables.layout import Layout

# Statuses of pairs whose activation file was damaged rather than its values undefined: a later
# analysis computes them again (a "nonfinite" activation, e.g. of a diverged lineage, stays).
RETRIED = ("unreadable", "bad_shape")


def set_aside_garbled_tables(workdir: str | os.PathLike) -> list[str]:
    """Set aside every Parquet file under `<workdir>/tables` whose footer cannot be read (a
    truncated or overwritten file, which would stop every scan of its table). Returns a line
    per file naming it and where it went."""
    tables = Layout(workdir).tables_dir
    moved = []
    for path in sorted(tables.rglob("*.parquet")) if tables.is_dir() else ():
        if path.name.startswith("."):
            continue
        try:
            pq.read_metadata(path)
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            aside = storage.set_aside(path)
            moved.append(f"{path} is not a readable Parquet file ({error}); set aside as {aside.name}, "
                         "and `impsweep analyze` computes its rows again")
    return moved


def retry_unreadable(workdir: str | os.PathLike, *, spec: AnalysisSpec, analysis_id: str) -> list[str]:
    """Drop the similarity tiles of this analysis that hold pairs with a `RETRIED` status, and the
    activation manifests of the checkpoints on either side of those pairs: the next steps then
    extract their activations again and compute the pairs anew. Returns a line per checkpoint."""
    layout = Layout(workdir)
    files, checkpoints = set(), set()
    for measure in spec.measures:
        folder = layout.similarity_dir(measure)
        if not folder.is_dir() or not any(folder.glob("*.parquet")):
            continue
        rows = (pl.scan_parquet(folder / "*.parquet", include_file_paths="file")
                .filter((pl.col("analysis_id") == analysis_id) & pl.col("status").is_in(RETRIED))
                .select("file", "a_checkpoint_id", "b_checkpoint_id").collect())
        files |= set(rows["file"])
        checkpoints |= set(rows["a_checkpoint_id"]) | set(rows["b_checkpoint_id"])
    for file in files:
        storage.remove(file)
    for cid in checkpoints:
        storage.remove(products(workdir, spec=spec, checkpoint_id=cid).manifest)
    return [f"checkpoint {cid}: activations extracted again (an earlier analysis could not read them)"
            for cid in sorted(checkpoints)]
