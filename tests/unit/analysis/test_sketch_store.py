"""Stored sketches in the analysis stage: tile rows equal `pairwise`, a second run recomputes
no sketch and writes identical rows, corrupted or stale files are recomputed, the size rule."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analysis.pairs import Rep, pair_set
from analysis.similarity import pairwise, sketch_spec
from analysis.sketch_store import SketchStore
from analysis.specs import AnalysisSpec
from analysis.tile_writer import TileWriter, tile_jobs
from trainables import layout

N = 48
SHAPES = {"fc1": (N, 8), "conv": (N, 3, 4, 4)}


def _workdir(tmp_path: Path) -> tuple[Path, list[Rep]]:
    """Activations of 2 lineages x 3 levels x 2 layers, drawn so that levels stay related."""
    workdir = tmp_path / "w"
    rng = np.random.default_rng(0)
    base = {layer: rng.standard_normal(shape) for layer, shape in SHAPES.items()}
    reps = []
    for s in range(2):
        lid = f"cA-s{s}"
        for level in range(3):
            cid = f"{lid}/L{level:02d}"
            for layer, shape in SHAPES.items():
                x = np.maximum(base[layer] + 0.5 * (level + s) * rng.standard_normal(shape), 0).astype(np.float32)
                key = layout.activation_file("pX", cid, layer=layer)  # as the manifests store it
                (workdir / key).parent.mkdir(parents=True, exist_ok=True)
                np.save(workdir / key, x)
                reps.append(Rep(cid, layer, lid, "cA", level, "g", key))
    return workdir, reps


def _run(workdir: Path, reps: list[Rep], measure: str, *, scope: str = "lineage", tile_size: int = 2,
         writer: TileWriter | None = None) -> tuple[TileWriter, pl.DataFrame]:
    spec = AnalysisSpec(measures=(measure,), scope=scope, tile_size=tile_size)
    pairs = pair_set(reps, layers="same", scope=scope)
    writer = writer or TileWriter(measure, spec_json=spec.model_dump_json(), analysis_id="a1", workdir=workdir)
    jobs = tile_jobs(pairs, pairs, measure=measure, spec=spec, workdir=workdir)
    out = writer({"job": np.array([job.to_json() for job in jobs])})
    assert sum(out["rows"]) == len(pairs)
    frame = pl.read_parquet(workdir / layout.similarity_dir(measure) / "*.parquet")
    return writer, frame.sort("a_checkpoint_id", "a_layer", "b_checkpoint_id", "b_layer")


def _sketch_files(workdir: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted((workdir / "analysis" / "sketches").rglob("*.pt"))}


@pytest.mark.parametrize("measure,scope", [("linear_cka", "dense"), ("pwcca", "lineage"), ("nbs", "seeds"),
                                           ("svcca", "dense")])
def test_tile_rows_equal_pairwise(tmp_path, measure, scope):
    workdir, reps = _workdir(tmp_path)
    _, rows = _run(workdir, reps, measure, scope=scope)
    paths = {(r.checkpoint_id, r.layer): workdir / r.path for r in reps}
    for row in rows.iter_rows(named=True):
        x = np.load(paths[(row["a_checkpoint_id"], row["a_layer"])])
        y = np.load(paths[(row["b_checkpoint_id"], row["b_layer"])])
        want = pairwise([x], [y], measure=measure)
        assert row["value"] == pytest.approx(float(want.values[0, 0]), abs=1e-12), row
        assert row["status"] == want.status[0, 0]
        assert row["conv_mode"] == ("none" if row["a_layer"] == "fc1" else want.conv)


def test_a_second_run_recomputes_no_sketch_and_writes_identical_rows(tmp_path):
    workdir, reps = _workdir(tmp_path)
    first, rows = _run(workdir, reps, "pwcca")
    assert first.sketches.computed == len(reps) == first.sketches.stored
    stored = _sketch_files(workdir)
    assert len(stored) == len(reps)
    shutil.rmtree(workdir / "tables")
    second, again = _run(workdir, reps, "pwcca")
    assert second.sketches.computed == 0 and second.sketches.loaded == len(reps)
    assert _sketch_files(workdir) == stored
    assert again.equals(rows)
    # Every CCA measure reads the same stored sketch.
    third, _ = _run(workdir, reps, "mean_cca")
    assert third.sketches.computed == 0 and _sketch_files(workdir) == stored


def test_a_corrupted_or_stale_sketch_is_recomputed(tmp_path):
    workdir, reps = _workdir(tmp_path)
    _, rows = _run(workdir, reps, "nbs", scope="all")
    files = sorted(_sketch_files(workdir))
    Path(files[0]).write_bytes(b"not a sketch")
    Path(files[1]).write_bytes(Path(files[1]).read_bytes()[:100])  # truncated
    activation = workdir / reps[-1].path
    os.utime(activation, ns=(activation.stat().st_atime_ns, activation.stat().st_mtime_ns + 10**9))
    shutil.rmtree(workdir / "tables")
    writer, again = _run(workdir, reps, "nbs", scope="all")
    assert writer.sketches.computed == 3 and writer.sketches.loaded == len(reps) - 3
    assert again.equals(rows)
    fresh = SketchStore(workdir)
    for rep in reps:
        fresh.get(rep.path, sketch_spec("nbs", SHAPES[rep.layer]))
    assert fresh.computed == 0


def test_large_grams_stay_in_memory_and_the_rest_is_stored(tmp_path):
    workdir, reps = _workdir(tmp_path)
    rep = next(r for r in reps if r.layer == "fc1")  # n = 48 > 4 p = 32: a Gram is 7x the file
    store = SketchStore(workdir)
    gram = sketch_spec("linear_cka", SHAPES["fc1"], form="gram")
    store.get(rep.path, gram)
    store.get(rep.path, gram)
    assert (store.computed, store.stored) == (1, 0) and not (workdir / store.path(rep.path, gram)).exists()
    features = sketch_spec("linear_cka", SHAPES["fc1"], form="features")
    store.get(rep.path, features)
    assert store.stored == 1 and (workdir / store.path(rep.path, features)).exists()
    assert (workdir / store.path(rep.path, features)).parent == workdir / "analysis" / "sketches" / "pX" / rep.checkpoint_id / "fc1"


def test_the_memory_cache_is_bounded(tmp_path):
    workdir, reps = _workdir(tmp_path)
    spec = sketch_spec("linear_cka", SHAPES["fc1"], form="gram")
    store = SketchStore(workdir, cache_bytes=1)  # holds one sketch at a time
    fc = [r for r in reps if r.layer == "fc1"][:2]
    for rep in fc + fc:
        store.get(rep.path, spec)
    assert store.computed == 4
    roomy = SketchStore(workdir)
    for rep in fc + fc:
        roomy.get(rep.path, spec)
    assert roomy.computed == 2
