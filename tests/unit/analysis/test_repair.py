"""Repairs before the tables are read: garbled Parquet files are named and set aside (the tables
scan again), tiles with unreadable activations are dropped with those checkpoints' manifests."""
from __future__ import annotations

import polars as pl

from analysis.extract import products
from analysis.repair import retry_unreadable, set_aside_garbled_tables
from analysis.specs import AnalysisSpec
from analysis.tables import scan_tables, to_arrow, write_table
from trainables import layout
from trainables.storage import LocalStore


def _row(a: str, b: str, status: str = "ok", aid: str = "a1") -> dict:
    return {"analysis_id": aid, "a_checkpoint_id": a, "a_lineage_id": a[:5], "a_level": int(a[-2:]), "a_layer": "fc1",
            "b_checkpoint_id": b, "b_lineage_id": b[:5], "b_level": int(b[-2:]), "b_layer": "fc1",
            "value": None if status != "ok" else 0.5, "status": status}


def test_garbled_table_files_are_named_and_set_aside(tmp_path):
    store = LocalStore(tmp_path)
    write_table(store, layout.catalog_table_file("sweep_lineages"),
                table=to_arrow([{"sweep": "s", "lineage_id": "cA-s0"}], "sweep_lineages"))
    good = layout.similarity_file("pwcca", analysis_id="a1", tile_id="t1")
    write_table(store, good, table=to_arrow([_row("cA-s0/L00", "cA-s0/L01")], "similarity"))
    good, truncated = tmp_path / good, tmp_path / layout.similarity_file("pwcca", analysis_id="a1", tile_id="t2")
    truncated.write_bytes(good.read_bytes()[:-20])
    garbage = tmp_path / layout.catalog_table_file("levels")
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"PAR1 garbage")
    lines = set_aside_garbled_tables(tmp_path)
    assert len(lines) == 2 and str(truncated) in lines[1] and str(garbage) in lines[0]
    assert truncated.with_name(truncated.name + ".corrupt").exists() and not truncated.exists()
    tables = scan_tables(tmp_path)
    assert tables["similarity"].collect().height == 1 and tables["levels"].collect().height == 0
    assert set_aside_garbled_tables(tmp_path) == []


def test_tiles_with_unreadable_activations_are_dropped_with_those_manifests(tmp_path):
    store, spec = LocalStore(tmp_path), AnalysisSpec(measures=("pwcca",))
    kept, dropped, other = (layout.similarity_file("pwcca", analysis_id=aid, tile_id=t)  # other: another analysis's
                            for aid, t in (("a1", "t1"), ("a1", "t2"), ("a2", "t3")))
    write_table(store, kept, table=to_arrow([_row("cA-s0/L00", "cA-s0/L00")], "similarity"))
    write_table(store, dropped, table=to_arrow([_row("cA-s0/L00", "cA-s0/L01"),
                                          _row("cA-s0/L00", "cA-s0/L02", "unreadable")], "similarity"))
    write_table(store, other, table=to_arrow([_row("cB-s0/L00", "cB-s0/L01", "unreadable", aid="a2")], "similarity"))
    kept, dropped, other = (tmp_path / key for key in (kept, dropped, other))
    manifests = {cid: tmp_path / products(tmp_path, spec=spec, checkpoint_id=cid).manifest
                 for cid in ("cA-s0/L00", "cA-s0/L01", "cA-s0/L02", "cB-s0/L00")}
    for path in manifests.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("[]")
    lines = retry_unreadable(tmp_path, spec=spec, analysis_id="a1")
    assert [line.split(":")[0] for line in lines] == ["checkpoint cA-s0/L00", "checkpoint cA-s0/L02"]
    assert kept.exists() and other.exists() and not dropped.exists()
    assert {cid for cid, path in manifests.items() if path.exists()} == {"cA-s0/L01", "cB-s0/L00"}
    assert pl.read_parquet(kept).height == 1
