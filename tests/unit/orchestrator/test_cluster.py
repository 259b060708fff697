"""cluster.yaml passes Ray's own cluster-config validation (offline: `prepare_config` fills
defaults and `validate_config` checks the schema; neither calls AWS), its workers may write the
bucket, its head serves MLflow to them, and the code's revision reaches the nodes."""
from __future__ import annotations

import fnmatch
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.experiments import REVISION_FILE

REPO = Path(__file__).parents[3]
CLUSTER = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(CLUSTER.read_text()))
    validate_config(config)  # raises on a schema violation
    return config


def _mlflow_command(config: dict) -> str:
    (command,) = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    return command


def test_cluster_yaml_validates_with_ray(config):
    assert config["provider"]["type"] == "aws"
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1
    assert config["idle_timeout_minutes"] > 0
    assert any("pip install" in cmd and "-e ." in cmd for cmd in config["setup_commands"])


def test_workers_may_write_the_bucket_and_the_head_serves_mlflow_to_them(config):
    arn = config["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]["Arn"]
    profile = re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/(.+)", arn).group(1)
    assert f"--instance-profile-name {profile}" in CLUSTER.read_text()  # the comment that creates it
    command = _mlflow_command(config)
    bucket = re.search(r"--artifacts-destination s3://([^/\s']+)/", command).group(1)
    assert f"arn:aws:s3:::{bucket}/*" in CLUSTER.read_text()  # the profile's policy names that bucket
    host = re.search(r"--host (\S+)", command).group(1)
    assert host not in ("0.0.0.0", "127.0.0.1", "localhost")  # the private address: workers reach it
    assert "--serve-artifacts" in command and "--backend-store-uri sqlite:////home/" in command


def test_the_revision_file_is_synced_and_never_committed(config):
    assert not any(fnmatch.fnmatch(REVISION_FILE, p) for p in config.get("rsync_exclude") or [])
    assert not config.get("rsync_filter")  # a .gitignore filter would leave the file out
    assert config["file_mounts"] == {"/home/ubuntu/impsweep": "."}
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", REVISION_FILE])
    assert ignored.returncode == 0


def test_every_ray_up_replaces_the_mlflow_server(config, tmp_path):
    """The head's command, run twice with stand-ins for `mlflow` and `curl`: each run starts a
    server in a session of its own, on the address it writes down, and stops the one before."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    home.mkdir()
    (bin_dir / "mlflow").write_text('#!/bin/bash\necho "$@" > "$HOME/args"; exec sleep 60\n')
    # healthy as soon as the server started (the real one takes about 25 s)
    (bin_dir / "curl").write_text(
        '#!/bin/bash\nfor i in $(seq 100); do [ -f "$HOME/args" ] && exit 0; sleep 0.02; done; exit 1\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    groups = []
    try:
        for _ in range(2):
            (home / "args").unlink(missing_ok=True)
            subprocess.run(["bash", "-c", _mlflow_command(config)], env=env, check=True, timeout=30)
            groups.append(int((home / "mlflow" / "server.pid").read_text()))
        uri = (home / "mlflow" / "tracking_uri").read_text().strip()
        args = shlex.split((home / "args").read_text())
        assert uri == f"http://{args[args.index('--host') + 1]}:5000"
        assert _stopped(groups[0]) and not _stopped(groups[1], wait_s=0)
    finally:
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _stopped(group: int, *, wait_s: float = 5.0) -> bool:
    """Whether process group `group` has no live process left (a zombie counts as stopped)
    within `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        states = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
            except OSError:
                continue
            if int(fields[2]) == group:
                states.append(fields[0])
        if all(state == "Z" for state in states):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
