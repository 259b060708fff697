"""Failures a long sweep meets: its driver killed mid-sweep, a worker node lost."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import yaml

from orchestrator import load_sweep, plan_sweep, run_sweep
from tests.integration.conftest import final_metrics, mlflow_runs, reference_metrics, tiny_sweep
from trainables.checkpoints import complete_levels

pytestmark = pytest.mark.integration

TRAIN = {"lr": 0.05, "batch_size": 128, "epochs": 6}


def _levels_done(workdir) -> int:
    root = workdir / "lineages"
    return sum(len(complete_levels(workdir, p.name)) for p in root.glob("c*")) if root.exists() else 0


def test_driver_killed_mid_sweep_then_resumed(tmp_path, ray_shutdown):
    raw = tiny_sweep(tmp_path / "w", train=TRAIN)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while _levels_done(tmp_path / "w") < 1 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
        assert driver.poll() is None, "the sweep finished before it could be interrupted"
        family = psutil.Process(driver.pid).children(recursive=True)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait(timeout=30)
        # Ray's daemons outlive a killed driver: end the ones it started, by PID.
        for proc in locals().get("family", []):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
    sweep = load_sweep(path)
    assert 1 <= _levels_done(sweep.workdir_path) < 6
    assert any(p.state != "done" for p in plan_sweep(sweep))
    outcome = run_sweep(sweep, echo=lambda _: None)
    assert outcome.failed == () and all(p.state == "done" for p in plan_sweep(sweep))
    runs = mlflow_runs(sweep.resolved_tracking_uri)
    kinds = sorted(r.data.tags["impsweep.kind"] for r in runs)
    assert kinds == ["level"] * 6 + ["lineage"] * 2  # no duplicate parent or child run
    assert final_metrics(sweep.resolved_tracking_uri) == reference_metrics(sweep, tmp_path / "ref")


def test_worker_node_lost_mid_sweep(tmp_path, ray_shutdown):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
    try:
        ray.init(address=cluster.address)
        sweep = load_sweep(tiny_sweep(tmp_path / "w", train=TRAIN, grid={"seed": [0, 1, 2]},
                                      max_concurrent=3, max_failures=3))
        removed: list = []

        def remove_a_worker() -> None:
            deadline = time.monotonic() + 300
            while _levels_done(sweep.workdir_path) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            cluster.remove_node(workers[0], allow_graceful=False)
            removed.append(workers[0])

        thread = threading.Thread(target=remove_a_worker, daemon=True)
        thread.start()
        outcome = run_sweep(sweep, echo=lambda _: None)
        thread.join(timeout=5)
        assert removed, "the worker node was not removed"
        assert outcome.failed == ()
        assert all(p.state == "done" for p in plan_sweep(sweep))
        assert final_metrics(sweep.resolved_tracking_uri) == reference_metrics(sweep, tmp_path / "ref")
    finally:
        ray.shutdown()
        cluster.shutdown()
