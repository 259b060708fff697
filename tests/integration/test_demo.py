"""The demo end to end, reduced: real Ray, real MLflow on SQLite, real Parquet; then again."""
from __future__ import annotations

import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from analysis.tables import scan_tables
from orchestrator.cli import main

pytestmark = pytest.mark.integration

ARGS = ["--set", "train.epochs=3", "--set", "prune.levels=2"]
LAYERS = {"fc1_relu", "fc2_relu", "fc3"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    import ray

    workdir = tmp_path_factory.mktemp("demo")
    try:
        code = main(["demo", "--workdir", str(workdir), *ARGS])
        yield workdir, code
    finally:
        ray.shutdown()


def _runs(workdir):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(ids, max_results=1000)


def test_demo_exits_zero_and_records_mlflow(demo_run, capsys):
    workdir, code = demo_run
    assert code == 0
    client, runs = _runs(workdir)
    assert client.get_experiment_by_name("demo") is not None
    parents = [r for r in runs if r.data.tags.get("impsweep.kind") == "lineage"]
    children = [r for r in runs if r.data.tags.get("impsweep.kind") == "level"]
    assert len(parents) == 2 and len(children) == 6
    for parent in parents:
        tags = parent.data.tags
        assert parent.info.run_name == tags["impsweep.lineage_id"]
        assert tags["impsweep.sweep.demo"] == "1"
        assert tags["impsweep.model"] == "lenet_300_100" and tags["impsweep.dataset"] == "digits"
        assert tags["impsweep.schedule"] == "imp" and tags["impsweep.code_rev"]
        assert tags["impsweep.lineage_id"] == f"{tags['impsweep.config_id']}-s{tags['impsweep.seed']}"
        assert parent.info.status == "FINISHED"
        assert parent.data.params["prune.rate"] == "0.2"
        history = client.get_metric_history(parent.info.run_id, "test_acc")
        assert sorted(m.step for m in history) == [0, 1, 2]
    by_parent = {p.info.run_id: p.data.tags["impsweep.lineage_id"] for p in parents}
    for child in children:
        tags = child.data.tags
        assert by_parent[tags["mlflow.parentRunId"]] == tags["impsweep.lineage_id"]
        assert tags["impsweep.checkpoint_id"] == f"{tags['impsweep.lineage_id']}/L0{tags['impsweep.level']}"
        assert child.info.status == "FINISHED"
        assert tags["impsweep.precision"] == "fp32"  # precision auto, on CPU
        assert set(child.data.metrics) >= {"sparsity", "test_acc", "test_loss", "train_loss", "wall_s"}
        assert child.data.metrics["sparsity"] == pytest.approx(1 - 0.8 ** int(tags["impsweep.level"]), abs=1e-4)
        # artifacts on the workdir's disk: a reference to the level, not a second copy of it
        files = {f.path for f in client.list_artifacts(child.info.run_id, "checkpoint")}
        assert files == {"checkpoint/checkpoint.json"}
        assert tags["impsweep.checkpoint_uri"].endswith(f"lineages/{tags['impsweep.checkpoint_id']}")


def test_tables_hold_exactly_the_pair_set(demo_run):
    workdir, _ = demo_run
    tables = {name: frame.collect() for name, frame in scan_tables(workdir).items()}
    assert tables["lineages"].height == 2 and tables["sweep_lineages"].height == 2
    assert tables["levels"].height == 6
    assert tables["layers"].height == 6 * 3  # three weight matrices (biases excluded)
    sim = tables["similarity"]
    assert set(sim["measure"].unique()) == {"linear_cka", "pwcca"}
    n_ckpt = 6
    for measure in ("linear_cka", "pwcca"):
        rows = sim.filter(pl.col("measure") == measure)
        assert rows.height == len(LAYERS) * n_ckpt * (n_ckpt + 1) // 2
        keys = rows.select("a_checkpoint_id", "b_checkpoint_id", "a_layer")
        assert keys.n_unique() == rows.height
        assert (rows["a_checkpoint_id"] <= rows["b_checkpoint_id"]).all()
        assert (rows["a_layer"] == rows["b_layer"]).all()
        assert set(rows["a_layer"].unique()) == LAYERS
        ok = rows.filter(pl.col("status") == "ok")
        assert ok["value"].min() >= 0 and ok["value"].max() <= 1
    cka_self = sim.filter((pl.col("measure") == "linear_cka") & (pl.col("a_checkpoint_id") == pl.col("b_checkpoint_id")))
    assert cka_self.height == n_ckpt * len(LAYERS)
    assert (cka_self["value"] - 1).abs().max() < 1e-6
    assert set(sim.columns) >= {
        "analysis_id", "a_checkpoint_id", "a_lineage_id", "a_level", "a_layer", "b_checkpoint_id",
        "b_lineage_id", "b_level", "b_layer", "value", "n_examples", "a_dim", "b_dim", "conv_mode",
        "options", "status",
    }
    assert (sim["n_examples"] == 1797).all()  # the probe set is the whole of digits


def test_per_checkpoint_products(demo_run):
    workdir, _ = demo_run
    tables = {name: frame.collect() for name, frame in scan_tables(workdir).items()}
    neurons = tables["neurons"]
    assert neurons.height == 6 * (300 + 100)  # every unit of the two hidden layers
    assert neurons["entropy"].min() >= 0 and neurons["entropy"].max() <= 10  # 10 classes, bits
    assert neurons["rates"].list.len().unique().to_list() == [10]
    rf = tables["receptive_fields"]
    assert rf.height == 6 * 300 and set(rf["layer"].unique()) == {"fc1"}
    dense = rf.filter(pl.col("checkpoint_id").str.ends_with("/L00"))
    assert (dense["n_inputs"] == 64).all()  # nothing pruned at level 0
    levels = tables["levels"]
    assert levels["hessian_top_eig"].null_count() == 0 and (levels["hessian_top_eig"] > 0).all()
    assert (levels["sharpness_epsilon"] == 0.01).all()
    assert tables["displacements"].group_by("checkpoint_id").len().height == 6


def test_second_demo_creates_nothing(demo_run, capsys):
    workdir, _ = demo_run
    _, before = _runs(workdir)
    files_before = sorted(p.name for p in (workdir / "tables").rglob("*.parquet"))
    rows_before = scan_tables(workdir)["similarity"].collect().height
    capsys.readouterr()
    assert main(["demo", "--workdir", str(workdir), *ARGS]) == 0
    out = capsys.readouterr().out
    assert "2 lineages, 2 already done, 0 to run" in out
    assert "checkpoints: all 6 cached" in out
    assert "63 already computed, 0 new" in out
    assert "fc2_relu" in out and "mean_similarity" in out
    _, after = _runs(workdir)
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in before)
    assert sorted(p.name for p in (workdir / "tables").rglob("*.parquet")) == files_before
    assert scan_tables(workdir)["similarity"].collect().height == rows_before
