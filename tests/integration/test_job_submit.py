"""The cluster user's path: `ray start` a head and a worker on 127.0.0.1, `ray job submit` a
smoke sweep with `impsweep run`, wait for it, check MLflow, stop what was started."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import yaml

from orchestrator.mlflow_server import free_port
from tests.integration.conftest import mlflow_runs, tiny_sweep

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _ray(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _stop_started(temp_dir: str) -> None:
    """End every process of the Ray instance rooted at `temp_dir` (never `ray stop`, which would
    end every Ray process of the user)."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@pytest.fixture
def local_cluster():
    # Ray's socket paths must stay short: a temp dir directly under /tmp, not pytest's.
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    port, dash = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    try:
        head = _ray("start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    f"--temp-dir={temp_dir}", "--disable-usage-stats", env=env)
        assert head.returncode == 0, head.stdout + head.stderr
        worker = _ray("start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                      env=env)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _stop_started(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_a_sweep(tmp_path, local_cluster):
    address, env = local_cluster
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    workdir = tmp_path / "results"
    (job_dir / "sweep.yaml").write_text(yaml.safe_dump(tiny_sweep(workdir, name="submitted")))
    submit = _ray("job", "submit", f"--address={address}", f"--working-dir={job_dir}", "--",
                  "impsweep", "run", "sweep.yaml", env=env, timeout=420)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in (submit.stdout + submit.stderr).lower()
    runs = mlflow_runs(f"sqlite:///{workdir / 'mlflow.db'}")
    kinds = sorted(r.data.tags["impsweep.kind"] for r in runs)
    assert kinds == ["level"] * 6 + ["lineage"] * 2
    assert all(r.info.status == "FINISHED" for r in runs)
