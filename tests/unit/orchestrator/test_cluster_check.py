"""Which local folders the pre-flight check of a cluster probes, and that it leaves a run on one
machine alone (the probing itself runs on a real multi-node cluster: tests/integration)."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cluster_check import check_cluster_storage, local_folders
from orchestrator.specs import load_sweep


def _sweep(**fields):
    raw = {"name": "s", "workdir": "w", "model": "lenet_300_100", "dataset": "digits", **fields}
    return load_sweep(raw)


def test_a_local_workdir_and_its_default_tracking_store_are_one_folder(tmp_path):
    assert local_folders(_sweep(workdir=str(tmp_path / "w"))) == {"workdir": tmp_path / "w"}


def test_a_named_sqlite_store_and_a_local_tune_storage_are_probed_where_they_live(tmp_path):
    sweep = _sweep(workdir="s3://bucket/runs", tracking_uri=f"sqlite:///{tmp_path}/db/mlflow.db",
                   storage_path=str(tmp_path / "tune"))
    assert local_folders(sweep) == {"tracking_uri": tmp_path / "db", "storage_path": tmp_path / "tune"}


@pytest.mark.parametrize("storage_path", [None, "s3://bucket/tune"])
def test_object_stores_and_servers_are_not_probed(storage_path):
    sweep = _sweep(workdir="s3://bucket/runs", tracking_uri="http://127.0.0.1:5000", storage_path=storage_path)
    assert local_folders(sweep) == {}


def test_without_a_cluster_nothing_is_checked_and_ray_is_not_started(tmp_path, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    lines = []
    check_cluster_storage(_sweep(workdir=str(tmp_path / "w")), echo=lines.append)
    assert lines == [] and not ray.is_initialized() and not Path(tmp_path / "w").exists()
