"""The workdir layout: the documented paths (pinned, as existing workdirs hold them), level
folder names both ways, sketches filed beside their activations."""
from __future__ import annotations

from pathlib import Path

from trainables.ids import digest
from trainables.layout import Layout

W = Path("/w")


def test_paths_are_the_documented_ones():
    layout = Layout("/w")
    lid, cid = "c0123456789ab-s3", "c0123456789ab-s3/L02"
    assert layout.root == W
    assert layout.lineage_dir(lid) == W / "lineages" / lid
    assert layout.level_dir(lid, 2) == W / "lineages" / lid / "L02"
    assert layout.level_dir(lid, 12) == W / "lineages" / lid / "L12"
    assert [layout.lineage_spec(lid).name, layout.rewind_point(lid).name, layout.progress(lid).name,
            layout.stopped(lid).name, layout.lineage_lock(lid).name] == [
        "spec.json", "rewind.pt", "progress.pt", "stopped.json", ".lock"]
    assert layout.analysis_lock == W / "analysis" / ".lock"
    assert layout.activation_file("pX", cid, layer="fc1") == W / "analysis" / "activations" / "pX" / lid / "L02" / "fc1.npy"
    assert layout.activation_index("r1", cid) == W / "analysis" / "activations" / "index" / "r1" / lid / "L02.json"
    assert layout.sharpness_file("r2", cid) == W / "analysis" / "sharpness" / "r2" / lid / "L02.json"
    assert layout.catalog_table_file("levels") == W / "tables" / "levels" / "part-0.parquet"
    assert layout.checkpoint_table_file("neurons", cid) == W / "tables" / "neurons" / f"part-{digest(cid)}.parquet"
    assert (layout.similarity_file("pwcca", analysis_id="a1", tile_id="t9")
            == W / "tables" / "similarity" / "measure=pwcca" / "part-a1-t9.parquet")
    assert layout.report_dir("s1") == W / "reports" / "s1"
    assert (layout.mlflow_db, layout.mlflow_artifacts, layout.ray_storage) == (W / "mlflow.db", W / "artifacts", W / "ray")


def test_level_folder_names_parse_back():
    assert Layout.level_of(Layout("/w").level_dir("c1-s0", 7).name) == 7
    assert [Layout.level_of(name) for name in ("L00", "L123", "spec.json", "L", "LX1", ".L01.ab.tmp")] == [
        0, 123, None, None, None, None]


def test_sketches_are_filed_beside_their_activations():
    layout = Layout("/w")
    activation = layout.activation_file("pX", "c1-s0/L00", layer="fc1")
    assert layout.sketch_file(activation, "cca-k1") == W / "analysis" / "sketches" / "pX" / "c1-s0" / "L00" / "fc1" / "cca-k1.pt"
    elsewhere = Path("/data/acts/fc1.npy")
    assert layout.sketch_file(elsewhere, "cca-k1") == W / "analysis" / "sketches" / "other" / digest(str(elsewhere)) / "cca-k1.pt"
