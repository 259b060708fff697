"""Fixtures of the integration tests: tiny sweeps, MLflow run counts, Ray shut down after each,
the sockets a process tree listens on."""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import psutil
import pytest
from mlflow.tracking import MlflowClient

# Ray 2.60 turns token authentication on by default; every node and client of a test must agree.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def tiny_sweep(workdir, **extra) -> dict:
    """Two LeNet-300-100 lineages on digits, 3 levels of 2 epochs: seconds of work each."""
    return {
        "name": extra.pop("name", "tiny"), "workdir": str(workdir), "resources": {"cpu": 1},
        "max_concurrent": 2, "max_failures": 2, "grid": {"seed": [0, 1]},
        "model": "lenet_300_100", "dataset": "digits",
        "train": {"lr": 0.05, "batch_size": 128, "epochs": 2},
        "prune": {"rate": 0.2, "levels": 2, "exclude": ["bias"]},
        "analysis": {"measures": ["linear_cka"], "layers": "same", "scope": "dense"},
        **extra,
    }


def mlflow_runs(tracking_uri: str) -> list:
    client = MlflowClient(tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=5000) if ids else []


def final_metrics(tracking_uri: str) -> dict[str, dict[str, float]]:
    """checkpoint_id -> metrics of every level run (wall time left out: it never repeats)."""
    out = {}
    for run in mlflow_runs(tracking_uri):
        if run.data.tags.get("impsweep.kind") == "level":
            out[run.data.tags["impsweep.checkpoint_id"]] = {
                k: v for k, v in run.data.metrics.items() if k != "wall_s"}
    return out


def reference_metrics(sweep, workdir) -> dict[str, dict[str, float]]:
    """The undisturbed result: every lineage of `sweep` run straight through, without Ray."""
    from trainables import run_lineage

    out = {}
    for spec in sweep.lineages:
        for level in run_lineage(spec, workdir=workdir).levels:
            out[level.checkpoint_id] = {k: v for k, v in level.metrics.items() if k != "wall_s"}
    return out


@pytest.fixture
def ray_shutdown():
    import ray

    yield
    ray.shutdown()


def listening_sockets(pid: int) -> list[tuple[str, str, int]]:
    """(process, address, port) of every TCP socket listening, and UDP socket bound, in process
    `pid` and its descendants (a driver: the Ray instance it started, its workers and agents)."""
    root = psutil.Process(pid)
    out = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            name, conns = f"{proc.name()}[{proc.pid}]", proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:  # a worker that ended meanwhile
            continue
        out += [(name, c.laddr.ip, c.laddr.port) for c in conns
                if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)]
    return out


def is_loopback(address: str) -> bool:
    """127.0.0.0/8 or ::1, also as an IPv4-mapped IPv6 address (::ffff:127.0.0.1)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


MOTO_SERVER = str(Path(sys.executable).with_name("moto_server"))  # moto[server], a dev dependency
BUCKET = "impsweep-test"


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> Iterator[str]:
    """A moto server (an S3-compatible server) on 127.0.0.1, shared by the session's tests: the
    environment pointing boto3, pyarrow and polars at it, and the bucket BUCKET (tests use
    prefixes of their own)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    server = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    with pytest.MonkeyPatch.context() as env:
        try:
            _wait_until_it_answers(endpoint, server)
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
                env.delenv(name, raising=False)
            env.setenv("AWS_CONFIG_FILE", "/nonexistent")  # no profile of the machine's user
            env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            env.setenv("AWS_ACCESS_KEY_ID", "test")
            env.setenv("AWS_SECRET_ACCESS_KEY", "test")
            env.setenv("AWS_DEFAULT_REGION", "us-east-1")
            env.setenv("AWS_ENDPOINT_URL", endpoint)
            boto3.session.Session().client("s3").create_bucket(Bucket=BUCKET)
            yield endpoint
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()


def _wait_until_it_answers(endpoint: str, server: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s  # slow to start when the machine is busy
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"moto_server exited with {server.returncode}")
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it serves
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto_server at {endpoint} did not answer within {timeout_s} s")
