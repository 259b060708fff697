"""Sweeps on a Ray cluster whose nodes share no disk: a head (0 CPUs) and a worker node with a /tmp
of its own, the workdir an S3 prefix (moto), MLflow a server on the head whose artifacts go to
the bucket. A sweep submitted with `ray job submit` runs, analyses and answers queries like the
same sweep on one machine and leaves no lineage data on the head; a worker node lost mid-sweep
is replaced and the sweep ends as if undisturbed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator import commands, load_sweep
from orchestrator.mlflow_server import MlflowServer
from tests.integration.conftest import (
    BUCKET, is_loopback, listening_sockets, reference_metrics, tiny_sweep,
)
from tests.integration.ray_nodes import BIN, RayCluster, namespaces_unusable, wait_until
from trainables.storage import COMMIT_MARKER
from trainables.tracking import KIND_LEVEL, KIND_LINEAGE, TAG

pytestmark = pytest.mark.integration

LEASE_S = "5"  # a lineage's lock held by a trial on a lost node lapses within seconds
FAST = {"neurons": False, "receptive_fields": False, "sharpness": False}
ANALYSIS = {**FAST, "measures": ["linear_cka"], "layers": "same", "scope": "dense"}
# One query over both kinds of table: every similarity row with the training record of its level.
QUERY = ("SELECT s.measure, s.a_checkpoint_id, s.a_layer, s.b_checkpoint_id, s.b_layer, s.value, s.status, "
         "l.level, l.sparsity, l.test_acc, l.test_loss, l.train_loss FROM similarity s "
         "JOIN levels l ON l.checkpoint_id = s.b_checkpoint_id "
         "ORDER BY s.a_checkpoint_id, s.a_layer, s.b_checkpoint_id, s.b_layer")
LINEAGE_DATA = ("state.pt", "progress.pt", "rewind.pt")


@dataclass(frozen=True)
class Cluster:
    ray: RayCluster
    mlflow: MlflowServer
    head_disk: Path  # the head's own folder: the MLflow database, and TMPDIR of its processes


@pytest.fixture(scope="module")
def cluster(moto_endpoint, tmp_path_factory) -> Iterator[Cluster]:
    """One head, one worker node, one MLflow server for the module's tests (moto: the session's).
    The server and the head start together (the server takes the longest)."""
    reason = namespaces_unusable()
    if reason:
        pytest.skip(f"no cluster without a shared disk on this machine: {reason}")
    root = tmp_path_factory.mktemp("cluster")
    head_disk, logs = root / "head", root / "logs"
    (head_disk / "tmp").mkdir(parents=True)
    logs.mkdir()
    server = MlflowServer(f"sqlite:///{head_disk / 'mlflow.db'}", log_path=logs / "mlflow.log",
                          artifacts_destination=f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/mlflow-artifacts")
    nodes = RayCluster({**os.environ, "IMPSWEEP_LEASE_S": LEASE_S}, head_tmp=head_disk / "tmp", logs=logs)
    try:
        server.start(wait=False)
        nodes.start_head()
        nodes.start_worker()
        server.wait_healthy()
        yield Cluster(nodes, server, head_disk)
    finally:
        nodes.stop()
        server.stop()


def _write_sweep(folder: Path, raw: dict, *, name: str = "sweep.yaml") -> Path:
    folder.mkdir()
    (folder / name).write_text(yaml.safe_dump(raw))
    return folder / name


def _succeeded(code: int, out: str) -> None:
    """A `ray job submit` that waited for its job, and the job succeeded."""
    assert code == 0 and "succeeded" in out, out[-4000:]


def _keys(prefix: str) -> dict[str, str]:
    """key -> ETag of every object under `prefix` of the bucket."""
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def _lineage_data(*roots: Path) -> list[str]:
    """Checkpoints, activations or lineage folders anywhere under `roots`."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.name in LINEAGE_DATA or path.suffix == ".npy" or (path.name == "lineages" and path.is_dir()):
                found.append(str(path))
    return found


def _experiment_runs(tracking_uri: str, sweep: str) -> tuple[list, list]:
    """(lineage runs, level runs) of the experiment named `sweep`."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(sweep).experiment_id], max_results=1000)
    kind = [r.data.tags.get(f"{TAG}kind") for r in runs]
    return ([r for r, k in zip(runs, kind) if k == KIND_LINEAGE], [r for r, k in zip(runs, kind) if k == KIND_LEVEL])


def _trained(level_runs: list) -> dict[str, dict[str, float]]:
    """checkpoint id -> what training computed (wall-clock time aside), as `reference_metrics`."""
    return {r.data.tags[f"{TAG}checkpoint_id"]: {k: v for k, v in r.data.metrics.items() if k != "wall_s"}
            for r in level_runs}


def test_local_paths_the_nodes_do_not_share_and_a_missing_tracking_uri_are_refused_before_anything_trains(
        cluster, tmp_path):
    """The head sees pytest's /tmp, the worker node does not; /var/tmp is on a disk both share."""
    shared = Path(tempfile.mkdtemp(prefix="impsweep-shared-", dir="/var/tmp"))
    try:
        sweeps = {
            "unshared.yaml": tiny_sweep(tmp_path / "unshared", name="unshared", tracking_uri=cluster.mlflow.uri),
            "untracked.yaml": tiny_sweep(shared / "untracked", name="untracked"),
            "shared.yaml": tiny_sweep(shared / "ok", name="ok", tracking_uri=f"sqlite:///{shared / 'mlflow.db'}"),
        }
        job = tmp_path / "job"
        _write_sweep(job, sweeps.pop("unshared.yaml"), name="unshared.yaml")
        for name, raw in sweeps.items():
            (job / name).write_text(yaml.safe_dump(raw))
        # one driver for the three (the CLI's code path, without starting Python and Ray three times)
        script = ("import time; from orchestrator import cli, load_sweep; "
                  "from orchestrator.cluster_check import check_cluster_storage as check\n"
                  "for sweep in ('unshared.yaml', 'untracked.yaml'):\n"
                  "    t = time.monotonic(); code = cli.main(['run', sweep]); print(f'exit={code}', time.monotonic() - t)\n"
                  "check(load_sweep('shared.yaml'), echo=print); print('exit=0')")
        done = cluster.ray.submit(job, "python", "-c", script)
        out = done.stdout + done.stderr
        _succeeded(done.returncode, out)
        assert [l.split()[0] for l in out.splitlines() if l.startswith("exit=")] == ["exit=2", "exit=2", "exit=0"], out
        assert f"workdir: '{tmp_path / 'unshared'}' is a local path that 1 of the cluster's 2 nodes cannot see" in out
        assert "tracking_uri: not set, on a Ray cluster of 2 nodes" in out
        assert "workdir, tracking_uri seen by all 2 nodes" in out  # a real shared mount passes
        # refused before anything was written: no workdir, no tracking store, no run
        assert not (tmp_path / "unshared").exists() and sorted(p.name for p in shared.iterdir()) == []
        assert MlflowClient(cluster.mlflow.uri).get_experiment_by_name("unshared") is None
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_submitted_sweep_runs_on_the_cluster_and_answers_like_one_on_one_machine(
        cluster, tmp_path, monkeypatch, capsys, ray_shutdown):
    prefix = f"{uuid.uuid4().hex[:8]}/sweep"
    raw = tiny_sweep(f"s3://{BUCKET}/{prefix}", name="cluster", tracking_uri=cluster.mlflow.uri, analysis=ANALYSIS)
    job = tmp_path / "job"
    sweep_file = _write_sweep(job, raw)
    scratch = tmp_path / "cwd"
    scratch.mkdir()
    monkeypatch.chdir(scratch)  # nothing may land where a command runs
    for verb in ("run", "analyze"):
        done = cluster.ray.submit(job, "impsweep", verb, "sweep.yaml")
        _succeeded(done.returncode, done.stdout + done.stderr)
    queried = subprocess.run([str(BIN / "impsweep"), "query", str(sweep_file), QUERY, "--format", "json"],
                             env=cluster.ray.env, capture_output=True, text=True, timeout=300)
    assert queried.returncode == 0, queried.stderr[-3000:]

    # nothing of a lineage on the head: its Ray session, its scratch, the job's folder, here
    assert _lineage_data(cluster.ray.temp_dir, cluster.head_disk, tmp_path) == []
    assert sorted(os.listdir(job)) == ["sweep.yaml"] and os.listdir(scratch) == []
    keys = _keys(prefix)
    assert sum(k.endswith(f"/{COMMIT_MARKER}") and "/lineages/" in f"/{k}" for k in keys) == 6
    parents, levels = _experiment_runs(cluster.mlflow.uri, "cluster")
    assert len(parents) == 2 and len(levels) == 6
    assert all(r.info.status == "FINISHED" for r in parents + levels)
    artifacts = _keys(cluster.mlflow.artifacts_destination.split(f"{BUCKET}/")[1])
    for run in levels:  # each level's weights went through the server (a store impsweep cannot see into)
        assert any(f"/{run.info.run_id}/artifacts/checkpoint/weights.pt" in k for k in artifacts), run.info.run_id
    lineage_ids = {r.data.tags[f"{TAG}lineage_id"] for r in parents}
    trial_dirs = {k.split("/ray/cluster/")[1].split("/")[0] for k in keys if "/ray/cluster/" in k}
    assert lineage_ids <= trial_dirs and any(k.endswith("pointer.json") for k in keys)  # Tune's, on S3 too
    served = listening_sockets(cluster.mlflow.process.pid)
    assert served and all(is_loopback(address) for _, address, _ in served), served  # the server: 127.0.0.1 only

    # the same sweep on one machine: trained without Ray, analysed on a local disk, queried alike
    local = load_sweep({**raw, "workdir": str(tmp_path / "local")})
    assert _trained(levels) == reference_metrics(local, local.workdir)
    assert commands.analyze(local) == 0  # the catalog reads the same MLflow records, the checkpoints here
    capsys.readouterr()
    assert commands.query(local, QUERY, fmt="json") == 0
    expected = json.loads(capsys.readouterr().out)
    assert len(expected) == 2 * 3 * 3 and json.loads(queried.stdout) == expected


def _markers(prefix: str) -> dict[str, str]:
    """Commit marker -> ETag of every committed level under the workdir `prefix`."""
    return {k: e for k, e in _keys(f"{prefix}/lineages/").items() if k.endswith(f"/{COMMIT_MARKER}") and "/L" in k}


def _markers_once_a_level_1(prefix: str) -> dict[str, str] | None:
    markers = _markers(prefix)
    return markers if any("/L01/" in k for k in markers) else None


def test_a_worker_node_lost_mid_sweep_is_replaced_and_the_sweep_ends_as_if_undisturbed(cluster, tmp_path):
    prefix = f"{uuid.uuid4().hex[:8]}/lost"
    # seeds of their own: lineages that ran in the other test would be found done in MLflow
    raw = tiny_sweep(f"s3://{BUCKET}/{prefix}", name="lost", tracking_uri=cluster.mlflow.uri, grid={"seed": [2, 3]})
    job = tmp_path / "job"
    _write_sweep(job, raw)
    log = tmp_path / "submit.log"  # a file, not a pipe: nothing stalls the client while the test waits
    with open(log, "w") as out:
        submit = subprocess.Popen(cluster.ray.submit_command(job, "impsweep", "run", "sweep.yaml"),
                                  env=cluster.ray.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # the node dies once a level 1 is committed; its lineages have levels left to train
        at_kill = wait_until(lambda: _markers_once_a_level_1(prefix), "a level 1 committed", timeout_s=300,
                             pause_s=0.1)
        lost = cluster.ray.worker.kill()
        cluster.ray.start_worker()
        submit.wait(timeout=600)
    finally:
        if submit.poll() is None:
            submit.kill()
            submit.wait()
    out = log.read_text()
    _succeeded(submit.returncode, out)
    assert lost and len(at_kill) < 6, f"the node was lost too late: {sorted(at_kill)}"
    after = _markers(prefix)
    assert len(after) == 6
    assert {k: after.get(k) for k in at_kill} == at_kill  # levels committed before the loss were kept, not retrained
    assert "(read back)" in out  # the retried trials resumed from what the lost node had committed
    parents, levels = _experiment_runs(cluster.mlflow.uri, "lost")
    assert len({r.data.tags[f"{TAG}lineage_id"] for r in parents}) == len(parents) == 2
    assert all(r.info.status == "FINISHED" for r in parents)
    assert len(levels) == 6 and all(r.info.status == "FINISHED" for r in levels)  # no level logged twice
    sweep = load_sweep({**raw, "workdir": str(tmp_path / "reference")})
    assert _trained(levels) == reference_metrics(sweep, sweep.workdir)
