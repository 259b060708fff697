"""The Parquet tables: whole-file writes through the workdir's store, whole-table upserts, and
polars scans.

Small catalog tables (lineages, sweep_lineages, levels, layers) are one file each, rewritten
atomically as the union of what was there and what is new. The similarity table grows by one
file per computed tile under `similarity/measure=<m>/`, never rewritten.
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.schema import SCHEMAS, TABLES_SCHEMA_VERSION
from trainables import layout
from trainables.storage import Store, as_store

CATALOG_TABLES = ("lineages", "sweep_lineages", "levels", "layers")


def write_table(store: Store, key: str, *, table: pa.Table) -> None:
    """`table` as the zstd-compressed Parquet file `key` of `store`, whole or not at all (a local
    temporary is hidden: polars and pyarrow skip names starting with '.')."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    store.write_bytes(key, buffer.getvalue())


def read_table(store: Store, key: str) -> pl.DataFrame:
    return pl.read_parquet(io.BytesIO(store.read_bytes(key)))


def table_files(store: Store, name: str) -> list[str]:
    """Keys of the Parquet files of table `name` (set-aside `.corrupt` files and temporaries left out)."""
    return [key for key in store.list_files(layout.table_dir(name)) if key.endswith(".parquet")]


def to_arrow(rows: Sequence[dict], name: str) -> pa.Table:
    schema = SCHEMAS[name]
    filled = [{**row, "schema_version": TABLES_SCHEMA_VERSION} for row in rows]
    return pa.Table.from_pylist(filled, schema=schema)


def upsert(workdir: str | os.PathLike | Store, name: str, *, rows: Sequence[dict], key: Sequence[str]) -> int:
    """Merge `rows` into catalog table `name` by `key`: new rows win for the columns they give;
    columns they leave out (e.g. sharpness, added by a later stage) keep their stored values.
    Rewrites the file only when something changed. Returns the number of rows given."""
    store, path = as_store(workdir), layout.catalog_table_file(name)
    key = list(key)
    new = pl.from_arrow(to_arrow(rows, name))
    if store.exists(path):
        old = read_table(store, path)
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
    write_table(store, path, table=merged.to_arrow().cast(SCHEMAS[name]))
    return len(rows)


def update_columns(workdir: str | os.PathLike | Store, name: str, *, key: str, rows: Sequence[dict]) -> int:
    """Set some columns of existing rows of catalog table `name` (matched on `key`). Returns the
    number of rows given; rows whose key is absent are ignored."""
    store, path = as_store(workdir), layout.catalog_table_file(name)
    if not rows or not store.exists(path):
        return 0
    old = read_table(store, path)
    new = pl.DataFrame(rows).cast({c: old.schema[c] for c in rows[0]})
    merged = old.update(new, on=key, how="left")
    if not merged.equals(old):
        write_table(store, path, table=merged.to_arrow().cast(SCHEMAS[name]))
    return len(rows)


def scan_tables(workdir: str | os.PathLike | Store) -> dict[str, pl.LazyFrame]:
    """A polars LazyFrame per table, read straight from the workdir (a folder or an object-store
    URI); an absent table is an empty frame with its schema."""
    store = as_store(workdir)
    frames: dict[str, pl.LazyFrame] = {}
    for name, schema in SCHEMAS.items():
        files = [store.uri(key) for key in table_files(store, name)]
        if files:
            frames[name] = pl.scan_parquet(files, hive_partitioning=name == "similarity")
        elif name == "similarity":
            empty = pl.from_arrow(schema.empty_table()).with_columns(pl.lit(None, pl.String).alias("measure"))
            frames[name] = empty.lazy()
        else:
            frames[name] = pl.from_arrow(schema.empty_table()).lazy()
    return frames
