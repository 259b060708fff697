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
from trainables import layout
from trainables.storage import Store, as_store

# Statuses of pairs whose activation file was damaged rather than its values undefined: a later
# analysis computes them again (a "nonfinite" activation, e.g. of a diverged lineage, stays).
RETRIED = ("unreadable", "bad_shape")


def set_aside_garbled_tables(workdir: str | os.PathLike | Store) -> list[str]:
    """Set aside every Parquet file under `<workdir>/tables` whose footer cannot be read (a
    truncated or overwritten file, which would stop every scan of its table). Returns a line
    per file naming it and where it went."""
    store = as_store(workdir)
    moved = []
    for key in store.list_files(layout.TABLES):
        if not key.endswith(".parquet"):
            continue
        try:
            pq.read_metadata(store.uri(key))  # the footer alone (ranged reads on an object store)
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            aside = store.set_aside(key)
            moved.append(f"{store.uri(key)} is not a readable Parquet file ({error}); set aside as "
                         f"{aside.rsplit('/', 1)[-1]}, and `impsweep analyze` computes its rows again")
    return moved


def retry_unreadable(workdir: str | os.PathLike | Store, *, spec: AnalysisSpec, analysis_id: str) -> list[str]:
    """Drop the similarity tiles of this analysis that hold pairs with a `RETRIED` status, and the
    activation manifests of the checkpoints on either side of those pairs: the next steps then
    extract their activations again and compute the pairs anew. Returns a line per checkpoint."""
    store = as_store(workdir)
    files, checkpoints = set(), set()
    for measure in spec.measures:
        keys = {store.uri(key): key for key in store.list_files(layout.similarity_dir(measure))
                if key.endswith(".parquet")}
        if not keys:
            continue
        rows = (pl.scan_parquet(list(keys), include_file_paths="file")
                .filter((pl.col("analysis_id") == analysis_id) & pl.col("status").is_in(RETRIED))
                .select("file", "a_checkpoint_id", "b_checkpoint_id").collect())
        files |= {keys[uri] for uri in rows["file"]}
        checkpoints |= set(rows["a_checkpoint_id"]) | set(rows["b_checkpoint_id"])
    for key in files:
        store.delete(key)
    for cid in checkpoints:
        store.delete(products(store, spec=spec, checkpoint_id=cid).manifest)
    return [f"checkpoint {cid}: activations extracted again (an earlier analysis could not read them)"
            for cid in sorted(checkpoints)]
