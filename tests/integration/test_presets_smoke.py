"""One seed-paper preset's smoke twin end to end: train, analyse, and the tables it leaves."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from analysis import run_analysis, scan_tables
from orchestrator import load_sweep, run_sweep
from orchestrator.experiments import ensure_ray

pytestmark = pytest.mark.integration

PRESET = Path(__file__).resolve().parents[2] / "sweeps" / "frankle2019-lenet.yaml"


@pytest.fixture
def ray_local():
    import ray

    ensure_ray(num_cpus=2)  # a local instance on loopback, as the CLI starts it
    yield
    ray.shutdown()


def test_frankle_lottery_twin_runs_and_analyses(tmp_path, ray_local):
    """LeNet-300-100 on digits: a winning-ticket lineage and its random-reinit control, three
    levels each, layer-wise pruning with the output layer at half rate, then the analysis."""
    sweep = load_sweep(PRESET, smoke=True, overrides=[f"workdir={tmp_path / 'w'}"])
    assert {s.prune.control for s in sweep.lineages} == {None, "random_reinit"}
    outcome = run_sweep(sweep, echo=lambda _: None)
    assert not outcome.failed
    run_analysis(sweep.name, sweep.analysis, workdir=sweep.workdir,
                 tracking_uri=sweep.resolved_tracking_uri, echo=lambda _: None)
    tables = {k: v.collect() for k, v in scan_tables(sweep.workdir).items()}

    levels = tables["levels"]
    assert levels.height == 2 * 3 and levels["test_acc"].min() > 0.5
    assert levels["hessian_top_eig"].null_count() == 0

    # Layer-wise 20% per level, the output layer (fc3) at 10%: exact per-layer sparsities.
    final = tables["layers"].filter(pl.col("checkpoint_id").str.ends_with("/L02")
                                    & pl.col("layer").str.ends_with("weight"))
    for row in final.iter_rows(named=True):
        expected = 1 - 0.9 ** 2 if row["layer"].startswith("fc3") else 1 - 0.8 ** 2
        assert row["sparsity"] == pytest.approx(expected, abs=2e-3), row

    sim = tables["similarity"]
    dense_pairs = sim.filter(pl.col("a_lineage_id") == pl.col("b_lineage_id"))
    # Each of the 6 checkpoints against its own dense level 0, on every probed layer (3).
    assert dense_pairs.select("a_checkpoint_id", "b_checkpoint_id", "a_layer").unique().height == 6 * 3
    self_pairs = sim.filter(pl.col("a_checkpoint_id") == pl.col("b_checkpoint_id"))
    assert self_pairs["value"].to_numpy() == pytest.approx(1.0, abs=1e-4)
    assert tables["neurons"].height > 0
