"""Tiles with unusable representations: a diverged checkpoint's NaN activations, a garbled or
missing activation file, an activation of the wrong shape give their pairs a null value and the
reason as status; every other pair of the tile keeps its value; the writer says what it skipped."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analysis.pairs import Rep, pair_set
from analysis.similarity import pairwise
from analysis.specs import AnalysisSpec
from analysis.tile_writer import TileWriter, tile_jobs
from trainables import layout

N = 40


def _workdir(tmp_path: Path, levels: int = 3) -> tuple[Path, list[Rep]]:
    """One lineage, `levels` levels, one fc layer of 6 units; paths stored relative, as manifests do."""
    workdir = tmp_path / "w"
    rng = np.random.default_rng(0)
    reps = []
    for level in range(levels):
        cid = f"cA-s0/L{level:02d}"
        key = layout.activation_file("pX", cid, layer="fc1")
        (workdir / key).parent.mkdir(parents=True, exist_ok=True)
        np.save(workdir / key, rng.standard_normal((N, 6)).astype(np.float32))
        reps.append(Rep(cid, "fc1", "cA-s0", "cA", level, "g", key))
    return workdir, reps


def _write(workdir: Path, reps: list[Rep], measure: str = "linear_cka"):
    spec = AnalysisSpec(measures=(measure,), scope="lineage", tile_size=8)
    pairs = pair_set(reps, layers="same", scope="lineage")
    writer = TileWriter(measure, spec_json=spec.model_dump_json(), analysis_id="a1", workdir=workdir)
    written, skipped = 0, []
    for job in tile_jobs(pairs, pairs, measure=measure, spec=spec, workdir=workdir):
        rows, bad = writer.write(job)
        written += rows
        skipped += bad
    frame = pl.read_parquet(workdir / layout.similarity_dir(measure) / "*.parquet")
    assert written == len(pairs) == frame.height
    return frame, skipped


def _pair(frame: pl.DataFrame, a: int, b: int) -> dict:
    return frame.filter((pl.col("a_level") == a) & (pl.col("b_level") == b)).row(0, named=True)


@pytest.mark.parametrize("damage,reason", [
    (lambda p: np.save(p, np.full((N, 6), np.nan, dtype=np.float32)), "nonfinite"),
    (lambda p: p.write_bytes(b"\x93NUMPY garbled"), "unreadable"),
    (lambda p: p.unlink(), "unreadable"),
    (lambda p: np.save(p, np.ones((N, 5), dtype=np.float32)), "bad_shape"),
], ids=["nan", "garbled", "missing", "wrong_shape"])
def test_an_unusable_representation_nulls_its_pairs_only(tmp_path, damage, reason):
    workdir, reps = _workdir(tmp_path)
    damage(workdir / reps[1].path)
    frame, skipped = _write(workdir, reps)
    assert [(s.checkpoint_id, s.layer, s.reason) for s in skipped] == [("cA-s0/L01", "fc1", reason)]
    for a, b in [(0, 1), (1, 1), (1, 2)]:
        row = _pair(frame, a, b)
        assert row["value"] is None and row["status"] == reason
    for a, b in [(0, 0), (0, 2), (2, 2)]:
        row = _pair(frame, a, b)
        x, y = (np.load(workdir / reps[k].path) for k in (a, b))
        assert row["status"] == "ok"
        assert row["value"] == pytest.approx(float(pairwise([x], [y], measure="linear_cka").values[0, 0]), abs=1e-12)


def test_a_layer_without_one_readable_activation_is_skipped_whole(tmp_path):
    workdir, reps = _workdir(tmp_path, levels=2)
    for rep in reps:
        (workdir / rep.path).write_bytes(b"not an array")
    frame, skipped = _write(workdir, reps, measure="pwcca")
    assert frame["status"].to_list() == ["unreadable"] * 3 and frame["value"].null_count() == 3
    assert {s.checkpoint_id for s in skipped} == {"cA-s0/L00", "cA-s0/L01"}
