"""The sweep report: index.html and valid PNGs, restricted to the sweep, notes for absent tables,
escaped HTML, atomic replacement on re-runs, MLflow artifacts under `report/`."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analysis.report import write_report
from analysis.tables import to_arrow
from trainables import layout

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPARSITY = [0.0, 0.2, 0.36]
LAYERS = ["fc1", "fc2"]


def _report(workdir: Path, sweep: str, **options) -> Path:
    return Path(write_report(workdir, sweep, **options))


def _write_parquet(table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _write(workdir: Path, name: str, rows: list[dict]) -> None:
    _write_parquet(to_arrow(rows, name), workdir / layout.catalog_table_file(name))


def _sim_row(a: str, b: str, a_layer: str, b_layer: str, value: float) -> dict:
    return {"analysis_id": "a1", "a_checkpoint_id": a, "a_lineage_id": a.split("/")[0], "a_level": int(a[-2:]),
            "a_layer": a_layer, "b_checkpoint_id": b, "b_lineage_id": b.split("/")[0], "b_level": int(b[-2:]),
            "b_layer": b_layer, "value": value, "status": "ok"}


def _workdir(tmp_path: Path, *, model: str = "lenet_300_100", similarity: bool = True,
             checkpoint_root: Path | None = None, displacements: bool = False) -> Path:
    """Sweep `s1` holds lineages cA-s0, cA-s1; sweep `s2` holds cZ-s0 only."""
    workdir = tmp_path / "work"
    lineages = [("cA-s0", "cA", 0), ("cA-s1", "cA", 1), ("cZ-s0", "cZ", 0)]
    _write(workdir, "lineages", [{"lineage_id": lid, "config_id": cid, "model": model, "dataset": "digits",
                                  "seed": seed, "schedule": "imp", "rewind": "init", "rate": 0.2,
                                  "spec_json": json.dumps({"model": "lenet_300_100", "dataset": "digits"})}
                                 for lid, cid, seed in lineages])
    _write(workdir, "sweep_lineages", [{"sweep": "s1", "lineage_id": "cA-s0"}, {"sweep": "s1", "lineage_id": "cA-s1"},
                                       {"sweep": "s2", "lineage_id": "cZ-s0"}])
    root = checkpoint_root or tmp_path / "nowhere"
    _write(workdir, "levels", [{"checkpoint_id": f"{lid}/L{lv:02d}", "lineage_id": lid, "level": lv, "sparsity": sp,
                                "test_acc": 0.9 - lv / 10, "checkpoint_uri": (root / lid / f"L{lv:02d}").as_uri()}
                               for lid, _, _ in lineages for lv, sp in enumerate(SPARSITY)])
    if similarity:
        rows = [_sim_row(f"{lid}/L00", f"{lid}/L{lv:02d}", layer, layer, 1 - lv / 10)
                for lid, _, _ in lineages for lv in range(3) for layer in LAYERS]
        rows += [_sim_row("cA-s0/L00", "cA-s0/L02", a, b, 0.4) for a in LAYERS for b in LAYERS if a != b]
        _write_parquet(to_arrow(rows, "similarity"), workdir / layout.similarity_dir("linear_cka") / "part-0.parquet")
    if displacements:  # one file per checkpoint, as the extractor writes them
        for lid, _, _ in lineages:
            for lv in range(3):
                cid = f"{lid}/L{lv:02d}"
                rows = [{"checkpoint_id": cid, "layer": "fc1", "distance": float(d), "same_channel": 20 - 4 * d + lv,
                         "cross_channel": 0} for d in range(1, 5)]
                _write_parquet(to_arrow(rows, "displacements"),
                                     workdir / layout.table_dir("displacements") / f"part-{lid}-{lv}.parquet")
    return workdir


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def test_report_writes_index_and_valid_pngs_restricted_to_the_sweep(tmp_path):
    workdir = _workdir(tmp_path)
    index = _report(workdir, "s1")
    assert index == workdir / "reports" / "s1" / "index.html"
    assert _pngs(index.parent) == ["accuracy_vs_sparsity.png", "heatmap_linear_cka_1.png",
                                   "similarity_vs_sparsity_linear_cka.png"]
    for png in index.parent.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
    page = index.read_text()
    assert "cA-s0" in page and "cZ" not in page  # the other sweep's lineage is left out
    assert page.count("<img ") == 3 and "<script" not in page and "http" not in page
    for png in _pngs(index.parent):
        assert f'src="{png}"' in page


def test_absent_tables_leave_their_sections_out_with_a_note(tmp_path):
    workdir = _workdir(tmp_path, similarity=False)
    page = _report(workdir, "s1").read_text()
    assert "No similarity table for this sweep" in page
    assert "No neurons table (PSP-entropy)" in page
    assert "No receptive_fields table (locality)" in page
    assert "No displacements table" in page
    assert "no receptive-field images" in page  # checkpoints are not on disk: a note, not a crash
    assert _pngs(workdir / "reports" / "s1") == ["accuracy_vs_sparsity.png"]


def test_displacement_histograms_are_drawn_from_the_displacements_table(tmp_path):
    workdir = _workdir(tmp_path, similarity=False, displacements=True)
    index = _report(workdir, "s1")
    assert "displacement_histograms.png" in _pngs(index.parent)
    assert (index.parent / "displacement_histograms.png").read_bytes()[:8] == PNG_MAGIC
    page = index.read_text()
    assert 'src="displacement_histograms.png"' in page and "No displacements table" not in page
    empty = _workdir(tmp_path / "empty", similarity=False)
    (empty / layout.table_dir("displacements")).mkdir(parents=True)
    _write_parquet(to_arrow([], "displacements"), empty / layout.table_dir("displacements") / "part-0.parquet")
    page = _report(empty, "s1").read_text()
    assert "No displacements table" in page and "displacement_histograms.png" not in page


def test_strings_from_the_tables_are_escaped(tmp_path):
    workdir = _workdir(tmp_path, model="<b>net</b>&co", similarity=False)
    page = _report(workdir, "s1").read_text()
    assert "<b>net" not in page and "&lt;b&gt;net&lt;/b&gt;&amp;co" in page


def test_a_second_report_replaces_the_first_without_leftovers(tmp_path):
    workdir = _workdir(tmp_path, similarity=False)
    out = tmp_path / "out" / "rep"
    _report(workdir, "s1", out_dir=out)
    (out / "stale.png").write_bytes(PNG_MAGIC)
    index = _report(workdir, "s1", out_dir=out)
    assert index == out / "index.html"
    assert _pngs(out) == ["accuracy_vs_sparsity.png"]  # a file of the old report is gone
    assert sorted(p.name for p in out.parent.iterdir()) == [".rep.lock", "rep"]  # no temporaries left


def test_what_a_killed_report_left_is_removed_by_the_next_one(tmp_path):
    """A build killed mid-way leaves its hidden folder, or (between the two renames that swap
    the report in) the old report renamed aside; the next report of the same folder removes
    them, and leaves another report's build alone."""
    workdir = _workdir(tmp_path, similarity=False)
    out = tmp_path / "out" / "rep"
    for name in (".rep.x1y2.tmp", ".rep.z3.tmp.old", ".other.k9.tmp"):
        (out.parent / name).mkdir(parents=True)
        (out.parent / name / "index.html").write_text("half")
    _report(workdir, "s1", out_dir=out)
    assert sorted(p.name for p in out.parent.iterdir()) == [".other.k9.tmp", ".rep.lock", "rep"]


def test_unknown_sweep_is_a_value_error_naming_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"'nope'.*\['s1', 's2'\]"):
        _report(_workdir(tmp_path), "nope")


def test_receptive_field_images_come_from_the_checkpoints(tmp_path):
    import torch

    from trainables.models import build_model

    root = tmp_path / "lineages"
    model = build_model("lenet_300_100", input_shape=(1, 8, 8), num_classes=10)
    for lv in range(3):
        masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n.endswith("weight")}
        masks["fc1.weight"][:, : 16 * lv] = False
        level = root / "cA-s0" / f"L{lv:02d}"
        level.mkdir(parents=True)
        torch.save({"model": model.state_dict(), "masks": masks, "progress": {"level": lv}}, level / "state.pt")
        (level / "metrics.json").write_text("{}")
    workdir = _workdir(tmp_path, checkpoint_root=root, similarity=False)
    page = _report(workdir, "s1").read_text()
    assert "receptive_fields_1.png" in page and "no receptive-field images" not in page
    assert (workdir / "reports" / "s1" / "receptive_fields_1.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.integration  # a real SQLite store: creating its schema takes most of the test's seconds
def test_pngs_are_logged_once_to_each_lineage_parent_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("s1", artifact_location=(tmp_path / "artifacts").as_uri())
    member = client.create_run(experiment, tags={"impsweep.kind": "lineage", "impsweep.lineage_id": "cA-s0",
                                                 "impsweep.sweep.s1": "1"}).info.run_id
    outsider = client.create_run(experiment, tags={"impsweep.kind": "lineage", "impsweep.lineage_id": "cZ-s0",
                                                   "impsweep.sweep.s2": "1"}).info.run_id
    workdir = _workdir(tmp_path, similarity=False, displacements=True)
    for _ in range(2):
        _report(workdir, "s1", tracking_uri=uri)
    logged = [a.path for a in client.list_artifacts(member, "report")]
    assert logged == ["report/accuracy_vs_sparsity.png", "report/displacement_histograms.png"]
    assert client.list_artifacts(outsider) == []
