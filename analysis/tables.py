"""The Parquet tables: atomic file writes, whole-table upserts, and polars scans.

Small catalog tables (lineages, sweep_lineages, levels, layers) are one file each, rewritten
atomically as the union of what was there and what is new. The similarity table grows by one
file per computed tile under `similarity/measure=<m>/`, never rewritten.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.schema import SCHEMAS, TABLES_SCHEMA_VERSION
from trainables import storage
from trainables.layout import Layout

CATALOG_TABLES = ("lineages", "sweep_lineages", "levels", "layers")


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    """`table` as the zstd-compressed Parquet file `path`, written atomically (readers never see
    half a file: the temporary is hidden, and polars and pyarrow skip names starting with '.')."""
    storage.write_atomically(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def to_arrow(rows: Sequence[dict], name: str) -> pa.Table:
    schema = SCHEMAS[name]
    filled = [{**row, "schema_version": TABLES_SCHEMA_VERSION} for row in rows]
    return pa.Table.from_pylist(filled, schema=schema)


def upsert(workdir: str | os.PathLike, name: str, *, rows: Sequence[dict], key: Sequence[str]) -> int:
    """Merge `rows` into catalog table `name` by `key`: new rows win for the columns they give;
    columns they leave out (e.g. sharpness, added by a later stage) keep their stored values.
    Rewrites the file only when something changed. Returns the number of rows given."""
    path = Layout(workdir).catalog_table_file(name)
    key = list(key)
    new = pl.from_arrow(to_arrow(rows, name))
    if path.exists():
        old = pl.read_parquet(path)
        given = set(rows[0]) | {"schema_version"} if rows else set(old.columns)
        kept = [c for c in old.columns if c not in given]
        if kept:
            new = new.drop(kept).join(old.select(key + kept), on=key, how="left").select(old.columns)
        merged = pl.concat([old.join(new.select(key), on=key, how="anti"), new], how="vertical_relaxed")
        merged = merged.sort(key)
        if merged.equals(old):
            return 0
    else:
        merged = new.sort(key)
    write_parquet_atomic(merged.to_arrow().cast(SCHEMAS[name]), path)
    return len(rows)


def update_columns(workdir: str | os.PathLike, name: str, *, key: str, rows: Sequence[dict]) -> int:
    """Set some columns of existing rows of catalog table `name` (matched on `key`). Returns the
    number of rows given; rows whose key is absent are ignored."""
    path = Layout(workdir).catalog_table_file(name)
    if not rows or not path.exists():
        return 0
    old = pl.read_parquet(path)
    new = pl.DataFrame(rows).cast({c: old.schema[c] for c in rows[0]})
    merged = old.update(new, on=key, how="left")
    if not merged.equals(old):
        write_parquet_atomic(merged.to_arrow().cast(SCHEMAS[name]), path)
    return len(rows)


def scan_tables(workdir: str | os.PathLike) -> dict[str, pl.LazyFrame]:
    """A polars LazyFrame per table; an absent table is an empty frame with its schema."""
    layout = Layout(workdir)
    frames: dict[str, pl.LazyFrame] = {}
    for name, schema in SCHEMAS.items():
        folder = layout.table_dir(name)
        files = list(folder.rglob("*.parquet")) if folder.is_dir() else []
        files = [f for f in files if not f.name.startswith((".", "_"))]
        if name == "similarity":
            if files:
                frames[name] = pl.scan_parquet(folder / "**" / "*.parquet", hive_partitioning=True)
            else:
                empty = pl.from_arrow(schema.empty_table()).with_columns(pl.lit(None, pl.String).alias("measure"))
                frames[name] = empty.lazy()
        elif files and name in CATALOG_TABLES:
            frames[name] = pl.scan_parquet(layout.catalog_table_file(name))
        elif files:  # per-checkpoint files (neurons, receptive_fields, displacements)
            frames[name] = pl.scan_parquet(folder / "*.parquet")
        else:
            frames[name] = pl.from_arrow(schema.empty_table()).lazy()
    return frames
