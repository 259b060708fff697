"""The sweep report: one static HTML page with PNG figures of the sweep's tables (its sections
in `analysis.report_sections`), written atomically, and the figures also logged to each
lineage's MLflow parent run (`report/`)."""
from __future__ import annotations

import datetime as dt
import html
import os
import tempfile
from pathlib import Path

import polars as pl

from analysis.report_sections import Item, html_table, sections
from analysis.tables import scan_tables
from trainables import layout
from trainables.storage import Store, as_store, join, open_store


def write_report(workdir: str | os.PathLike | Store, sweep: str, *, tracking_uri: str | None = None,
                 out_dir: str | os.PathLike | None = None) -> str:
    """Write `index.html` and its PNG figures for `sweep` to `out_dir` (default
    `<workdir>/reports/<sweep>/`), replacing any earlier report, and return the index's location.

    Every table is restricted to the sweep's lineages (`sweep_lineages`); a table that is
    absent or empty for them leaves its section out with a note. The report is built in a local
    temporary folder and then stored as one group (`Store.replace_group`): on a local disk a
    reader sees the old report or the new one, never a mix. With `tracking_uri`, the PNGs are
    also logged as artifacts `report/<name>.png` of every lineage parent run tagged as a member
    of the sweep (same paths on re-runs, so MLflow overwrites instead of duplicating).
    Raises `ValueError` when the tables hold no lineage of `sweep`.
    """
    store = as_store(workdir)
    frames = _sweep_frames(store, sweep)
    target, prefix = (open_store(out_dir), "") if out_dir is not None else (store, layout.report_dir(sweep))
    with tempfile.TemporaryDirectory(prefix="impsweep-report-") as tmp:
        folder = Path(tmp)
        (folder / "index.html").write_text(_page(sweep, frames, sections(frames, folder)), encoding="utf-8")
        target.replace_group(prefix, {p.name: p.read_bytes() for p in sorted(folder.iterdir())})
        if tracking_uri is not None:
            _log_to_mlflow(folder, sweep, tracking_uri)
    return target.uri(join(prefix, "index.html"))


def _sweep_frames(store: Store, sweep: str) -> dict[str, pl.DataFrame]:
    """Every table restricted to the sweep: by lineage id, or by the checkpoints of its levels."""
    lazy = scan_tables(store)
    members = lazy["sweep_lineages"].filter(pl.col("sweep") == sweep).select("lineage_id").collect()
    ids = members["lineage_id"].unique().to_list()
    if not ids:
        known = sorted(lazy["sweep_lineages"].select("sweep").unique().collect()["sweep"].to_list())
        raise ValueError(f"sweep {sweep!r} has no lineages in the tables under {store.uri()}; "
                         f"known sweeps: {known}")
    out = {"lineages": lazy["lineages"].filter(pl.col("lineage_id").is_in(ids)).collect().sort("lineage_id"),
           "levels": lazy["levels"].filter(pl.col("lineage_id").is_in(ids)).collect().sort("lineage_id", "level")}
    checkpoints = out["levels"]["checkpoint_id"].to_list()
    for name in ("layers", "neurons", "receptive_fields", "displacements"):
        out[name] = lazy[name].filter(pl.col("checkpoint_id").is_in(checkpoints)).collect()
    out["similarity"] = lazy["similarity"].filter(
        pl.col("a_lineage_id").is_in(ids) & pl.col("b_lineage_id").is_in(ids)).collect()
    return out


def _page(sweep: str, frames: dict[str, pl.DataFrame], items_of: list[tuple[str, list[Item]]]) -> str:
    e = html.escape
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>impsweep report: {e(sweep)}</title><style>{_CSS}</style></head><body>",
             f"<h1>impsweep report: {e(sweep)}</h1><p class=\"date\">Generated {e(now)}</p>",
             "<h2>Lineages</h2>", html_table(_lineage_summary(frames), caption="Configurations of the sweep")]
    for title, items in items_of:
        parts.append(f"<h2>{e(title)}</h2>")
        for item in items:
            if item.png:
                parts.append(f"<figure><img src=\"{e(item.png)}\" alt=\"{e(item.caption)}\">"
                             f"<figcaption>{e(item.caption)}</figcaption></figure>")
            elif item.table:
                parts.append(item.table)
            else:
                parts.append(f"<p class=\"note\">{e(item.note)}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _lineage_summary(frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """One row per config: what it is, its seeds, and how far its lineages got."""
    done = frames["levels"].group_by("lineage_id").agg(pl.col("level").max().alias("last_level"),
                                                       pl.col("sparsity").max().alias("max_sparsity"))
    return (frames["lineages"].join(done, on="lineage_id", how="left")
            .group_by("config_id", "model", "dataset", "schedule", "rewind", "rate")
            .agg(pl.col("seed").sort().cast(pl.String).str.join(",").alias("seeds"),
                 pl.col("last_level").min().alias("levels_done"), pl.col("max_sparsity").max())
            .sort("config_id"))


def _log_to_mlflow(folder: Path, sweep: str, tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    from analysis.catalog import sweep_lineage_runs

    client = MlflowClient(tracking_uri)
    pngs = sorted(folder.glob("*.png"))
    for run in sweep_lineage_runs(client, sweep):
        for png in pngs:
            client.log_artifact(run.run_id, str(png), artifact_path="report")


_CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; }
caption { font-weight: bold; text-align: left; padding-bottom: 0.3em; }
figure { margin: 1.5em 0; } img { max-width: 100%; }
figcaption { font-style: italic; color: #444; }
p.note { color: #775; font-style: italic; } p.date { color: #666; }
"""
