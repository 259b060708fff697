"""The analysis stage on a small real sweep: exact pair sets, values, incrementality, failures."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import psutil
import pytest
import yaml

from analysis import AnalysisSpec, run_analysis, scan_tables
from analysis.similarity import similarity
from orchestrator import load_sweep, run_sweep
from orchestrator.experiments import ensure_ray
from tests.integration.conftest import is_loopback, listening_sockets, tiny_sweep

pytestmark = pytest.mark.integration

FAST = {"neurons": False, "receptive_fields": False, "sharpness": False}


@pytest.fixture(scope="module")
def ray_module():
    import ray

    ensure_ray(num_cpus=2)  # a local instance on loopback, as the CLI starts it
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def swept(tmp_path_factory, ray_module):
    """Two lineages of three levels, trained once for the whole module."""
    root = tmp_path_factory.mktemp("swept")
    raw = tiny_sweep(root / "w", name="base")
    run_sweep(load_sweep(raw), echo=lambda _: None)
    return root / "w", raw


@pytest.fixture
def workdir(swept, tmp_path):
    """A private copy of the swept workdir (its MLflow store and checkpoints)."""
    src, raw = swept
    dst = tmp_path / "w"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tables", "analysis", "ray"))
    return dst


def _analyze(workdir, sweep="base", **spec):
    return run_analysis(sweep, AnalysisSpec(**{**FAST, **spec}), workdir=workdir,
                        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}", echo=lambda _: None)


def _sim(workdir, measure=None) -> pl.DataFrame:
    frame = scan_tables(workdir)["similarity"].collect()
    return frame if measure is None else frame.filter(pl.col("measure") == measure)


def test_rows_equal_the_pair_set_of_every_scope(workdir):
    """One analysis grown scope by scope (scope and layers choose pairs, not values: one analysis
    id): each call's pair set has its exact size, and computes only the pairs not there yet; the
    union of the three scopes is exactly the rows they left, so it computes nothing."""
    heights = []
    for scope, layers, expected in [("dense", "same", 18), ("lineage", "same", 36), ("seeds", "same", 27),
                                    (["seeds", "lineage", "dense"], "same", 45), ("dense", "all", 48)]:
        before = _sim(workdir).height
        outcome = _analyze(workdir, measures=("linear_cka",), scope=scope, layers=layers)
        heights.append(_sim(workdir).height)
        assert outcome.pairs_total == {"linear_cka": expected}
        assert outcome.pairs_computed == {"linear_cka": heights[-1] - before}
    # lineage adds its pairs across levels to dense's, seeds its cross-seed ones (self-pairs are
    # shared), all layers the 30 cross-layer pairs of dense's 6 checkpoint pairs
    assert heights == [18, 36, 45, 45, 75]


def _assert_values_agree_with_the_library(workdir) -> None:
    acts = {}
    for manifest in (workdir / "analysis" / "activations" / "index").rglob("*.json"):
        for row in json.loads(manifest.read_text()):
            acts[(row["checkpoint_id"], row["layer"])] = np.load(workdir / row["path"])
    rows = _sim(workdir).sample(n=12, seed=0)
    for row in rows.iter_rows(named=True):
        x = acts[(row["a_checkpoint_id"], row["a_layer"])]
        y = acts[(row["b_checkpoint_id"], row["b_layer"])]
        expected = similarity(x, y, measure=row["measure"])
        assert row["value"] == pytest.approx(expected, abs=1e-10), row


def test_second_run_writes_nothing_and_a_new_lineage_adds_its_pairs(workdir):
    _analyze(workdir, measures=("linear_cka",), scope="dense")
    files = sorted((workdir / "tables").rglob("*.parquet"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = _analyze(workdir, measures=("linear_cka",), scope="dense")
    assert again.pairs_computed == {"linear_cka": 0}
    assert [f.stat().st_mtime_ns for f in sorted((workdir / "tables").rglob("*.parquet"))] == stamps
    grown = load_sweep(tiny_sweep(workdir, name="base", grid={"seed": [0, 1, 2]}))
    run_sweep(grown, echo=lambda _: None)
    outcome = _analyze(workdir, measures=("linear_cka",), scope="dense")
    assert outcome.pairs_computed == {"linear_cka": 9}  # (L0,L0) (L0,L1) (L0,L2) x 3 layers
    assert _sim(workdir).height == 27


def test_bad_checkpoint_is_reported_and_skipped(workdir):
    lineage = sorted((workdir / "lineages").glob("c*"))[0]
    (lineage / "L01" / "state.pt").write_bytes(b"not a checkpoint")
    shutil.rmtree(lineage / "L02")
    outcome = _analyze(workdir, measures=("linear_cka",), scope="all")
    failed = dict(outcome.failed_checkpoints)
    assert set(failed) == {f"{lineage.name}/L01", f"{lineage.name}/L02"}
    assert "state.pt is missing" in failed[f"{lineage.name}/L02"]
    assert failed[f"{lineage.name}/L01"].startswith("error: ")
    sim = _sim(workdir)
    assert sim.height == 3 * (4 * 5 // 2)  # the other four checkpoints, all pairs, 3 layers
    bad = {f"{lineage.name}/L01", f"{lineage.name}/L02"}
    assert not set(sim["a_checkpoint_id"]) & bad and not set(sim["b_checkpoint_id"]) & bad


def test_interrupted_analysis_resumes_to_the_same_tables(workdir, tmp_path):
    """Ctrl-C mid-analysis: `impsweep analyze` exits 130 and says how to resume; the next run
    completes the tables exactly. Meanwhile its Ray instance listens on loopback only."""
    reference = tmp_path / "ref"
    shutil.copytree(workdir, reference)
    raw = tiny_sweep(workdir, name="base", analysis={**FAST, "measures": ["pwcca"], "scope": "all", "tile_size": 1})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    log = tmp_path / "analyze.log"
    with log.open("w") as out:  # a file, not a pipe: a full pipe would block the driver
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "analyze", str(path)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    folder = workdir / "tables" / "similarity"
    family = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if folder.exists() and len(list(folder.rglob("*.parquet"))) >= 5:
                break
            time.sleep(0.05)
        family = psutil.Process(proc.pid).children(recursive=True)
        sockets = listening_sockets(proc.pid)  # the driver, and the Ray instance it started
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        # the reference meanwhile: the interrupted driver takes seconds to end its Ray instance
        _analyze(reference, measures=("pwcca",), scope="all", tile_size=1)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        psutil.wait_procs([p for p in family if p.is_running()], timeout=15)
        for leftover in [p for p in family if p.is_running()]:
            leftover.kill()
    assert proc.returncode == 130, log.read_text()
    assert f"run `impsweep analyze {path}` again to resume" in log.read_text()
    assert any(name.startswith("raylet") for name, _, _ in sockets), sockets
    assert [s for s in sockets if not is_loopback(s[1])] == []
    partial = len(list(folder.rglob("*.parquet"))) if folder.exists() else 0
    assert partial < 21 * 3, "the analysis finished before it could be interrupted"
    # what a driver killed mid-write leaves (the interrupt above may or may not have left one)
    planted = folder / "measure=pwcca" / ".part-a1-t1.parquet.k1ll3d.tmp"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"PAR1 half a file")
    outcome = _analyze(workdir, measures=("pwcca",), scope="all", tile_size=1)
    leftovers = [p for root in ("tables", "analysis") for p in (workdir / root).rglob(".*.tmp")]
    assert leftovers == []
    assert outcome.failed_checkpoints == ()
    key = ["measure", "a_checkpoint_id", "a_layer", "b_checkpoint_id", "b_layer"]
    got, want = _sim(workdir).sort(key), _sim(reference).sort(key)
    assert got.height == want.height == 21 * 3
    assert got.select(key + ["value", "status"]).equals(want.select(key + ["value", "status"]))


def test_sketches_are_stored_once_and_reused_by_reruns_and_measures(workdir):
    first = _analyze(workdir, measures=("linear_cka", "pwcca"), scope="lineage")
    assert first.sketches_computed["pwcca"] == 6 * 3  # one per representation, not per tile
    stored = {p: p.stat().st_mtime_ns for p in (workdir / "analysis" / "sketches").rglob("*.pt")}
    assert len(stored) >= 6 * 3
    key = ["measure", "a_checkpoint_id", "a_layer", "b_checkpoint_id", "b_layer"]
    rows = _sim(workdir).sort(key)
    shutil.rmtree(workdir / "tables" / "similarity")
    again = _analyze(workdir, measures=("linear_cka", "pwcca", "mean_cca"), scope="lineage")
    assert again.sketches_computed["pwcca"] == again.sketches_computed["mean_cca"] == 0
    assert {p: p.stat().st_mtime_ns for p in (workdir / "analysis" / "sketches").rglob("*.pt")} == stored
    got = _sim(workdir).filter(pl.col("measure") != "mean_cca").sort(key)
    assert got.select(key + ["value", "status", "a_dim", "b_dim"]).equals(
        rows.select(key + ["value", "status", "a_dim", "b_dim"]))


def test_values_agree_with_the_library_in_copied_and_moved_workdirs_and_damage_is_named(workdir, tmp_path, capsys):
    """Values agree with `analysis.similarity`. Manifests name activation files relative to the
    workdir: a copy reads its own files, not the original's, and a moved workdir keeps working. A
    damaged activation file nulls its pairs with status `unreadable` (the rest completes,
    `analyze` exits 1 naming it), and the next analysis extracts it again."""
    from orchestrator import commands

    _analyze(workdir, measures=("linear_cka", "pwcca", "nbs"), scope="lineage")
    _assert_values_agree_with_the_library(workdir)
    copy, moved = tmp_path / "copy", tmp_path / "moved"
    shutil.copytree(workdir, copy)
    for npy in (workdir / "analysis" / "activations").rglob("*.npy"):
        npy.write_bytes(b"garbage")  # the original's files: the copy must not read them
    shutil.move(copy, moved)  # nor the files where the copy was
    damaged = sorted((moved / "analysis" / "activations").rglob("fc2_relu.npy"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated
    cid = damaged.parent.relative_to(damaged.parents[2]).as_posix()  # <lineage_id>/L<NN>
    sweep = load_sweep(tiny_sweep(moved, name="base", analysis={**FAST, "measures": ["mean_cca"], "scope": "lineage"}))
    assert commands.analyze(sweep) == 1
    assert f"skipped representation {cid} fc2_relu: activation unreadable" in capsys.readouterr().out
    rows = _sim(moved, "mean_cca")
    bad = rows.filter((pl.col("a_checkpoint_id") == cid) | (pl.col("b_checkpoint_id") == cid)).filter(
        pl.col("a_layer") == "fc2_relu")
    assert bad.height == 3 and bad["status"].unique().to_list() == ["unreadable"] and bad["value"].null_count() == 3
    assert rows.filter(pl.col("status") == "ok").height == rows.height - 3
    assert commands.analyze(sweep) == 0  # extracted again, pairs recomputed
    assert _sim(moved, "mean_cca")["status"].unique().to_list() == ["ok"]
    assert _sim(moved, "mean_cca").height == rows.height
