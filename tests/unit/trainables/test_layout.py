"""The workdir layout: the documented keys (pinned, as existing workdirs hold them), level folder
names both ways, sketches filed beside their activations."""
from __future__ import annotations

from trainables import layout
from trainables.ids import digest


def test_keys_are_the_documented_ones():
    lid, cid = "c0123456789ab-s3", "c0123456789ab-s3/L02"
    assert layout.lineage_dir(lid) == f"lineages/{lid}"
    assert layout.level_dir(lid, 2) == f"lineages/{lid}/L02"
    assert layout.level_dir(lid, 12) == f"lineages/{lid}/L12"
    assert [layout.lineage_spec(lid), layout.rewind_point(lid), layout.progress(lid), layout.stopped(lid),
            layout.lineage_lock(lid)] == [f"lineages/{lid}/{name}" for name in (
                "spec.json", "rewind.pt", "progress.pt", "stopped.json", ".lock")]
    assert layout.ANALYSIS_LOCK == "analysis/.lock"
    assert layout.activation_file("pX", cid, layer="fc1") == f"analysis/activations/pX/{lid}/L02/fc1.npy"
    assert layout.activation_index("r1", cid) == f"analysis/activations/index/r1/{lid}/L02.json"
    assert layout.sharpness_file("r2", cid) == f"analysis/sharpness/r2/{lid}/L02.json"
    assert layout.catalog_table_file("levels") == "tables/levels/part-0.parquet"
    assert layout.checkpoint_table_file("neurons", cid) == f"tables/neurons/part-{digest(cid)}.parquet"
    assert layout.similarity_file("pwcca", analysis_id="a1", tile_id="t9") == (
        "tables/similarity/measure=pwcca/part-a1-t9.parquet")
    assert layout.report_dir("s1") == "reports/s1"
    assert (layout.MLFLOW_DB, layout.MLFLOW_ARTIFACTS, layout.RAY_STORAGE) == ("mlflow.db", "artifacts", "ray")


def test_level_folder_names_parse_back():
    assert layout.level_of(layout.level_dir("c1-s0", 7).rsplit("/", 1)[-1]) == 7
    assert [layout.level_of(name) for name in ("L00", "L123", "spec.json", "L", "LX1", ".L01.ab.tmp")] == [
        0, 123, None, None, None, None]


def test_sketches_are_filed_beside_their_activations():
    activation = layout.activation_file("pX", "c1-s0/L00", layer="fc1")
    assert layout.sketch_file(activation, "cca-k1") == "analysis/sketches/pX/c1-s0/L00/fc1/cca-k1.pt"
    elsewhere = "/data/acts/fc1.npy"
    assert layout.sketch_file(elsewhere, "cca-k1") == f"analysis/sketches/other/{digest(elsewhere)}/cca-k1.pt"
