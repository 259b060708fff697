"""Ray nodes of a test cluster on one machine, each in a mount namespace of its own: a head with
0 CPUs and workers whose /tmp is a private tmpfs, so that no node sees what another writes
there (the network is shared: every node reaches the 127.0.0.1 servers). A node is stopped, or
lost, by killing every process of its namespace: that finds the daemons Ray renames and the
processes a killed parent left behind."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from orchestrator.mlflow_server import free_port

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
_UNSHARE = ["unshare", "--mount", "--propagation", "private"]
_OWN_NAMESPACE = os.readlink("/proc/self/ns/mnt")


def namespaces_unusable() -> str | None:
    """Why nodes in private mount namespaces cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root: each Ray node runs in a private mount namespace (unshare --mount, mount -t tmpfs)"
    try:
        probe = subprocess.run([*_UNSHARE, "sh", "-c", "mount -t tmpfs tmpfs /tmp"], capture_output=True,
                               text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unshare --mount does not run here ({err})"
    return None if probe.returncode == 0 else f"unshare --mount fails here: {probe.stderr.strip()}"


def _private_tmp_script() -> str:
    """Shell lines that mount a tmpfs over /tmp, then bind back the code and the Python environment
    the node runs (a checkout or venv under /tmp would vanish with it; each folder is opened
    before the mount and bound from its descriptor, which still reaches the disk below)."""
    kept = sorted({p for p in (REPO, Path(sys.prefix).resolve()) if Path("/tmp") in p.parents})
    kept = [p for p in kept if not any(q in p.parents for q in kept)]  # a venv inside the checkout
    opened = "".join(f"exec {3 + i}<{shlex.quote(str(p))} && " for i, p in enumerate(kept))
    bound = "".join(f"mkdir -p {shlex.quote(str(p))} && mount --no-canonicalize --bind /proc/self/fd/{3 + i} "
                    f"{shlex.quote(str(p))} && exec {3 + i}<&- && " for i, p in enumerate(kept))
    return f"{opened}mount -t tmpfs tmpfs /tmp && {bound}"


def node_env(base: dict[str, str], **extra: str) -> dict[str, str]:
    """`base` as every process of the cluster needs it: the venv's tools first on PATH (a job's
    entrypoint inherits the node's PATH), this checkout importable (Ray workers and job
    entrypoints alike), token authentication off on every node and client (Ray 2.60 turns it
    on by default), no RAY_ADDRESS of the caller's."""
    env = {**base, "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), base.get("PYTHONPATH", "")] if p)
    env.pop("RAY_ADDRESS", None)
    return env


class Node:
    """One `ray start ... --block` in a mount namespace of its own (with `private_tmp`, a tmpfs of
    its own over /tmp). `kill()` ends every process of the namespace."""

    def __init__(self, ray_args: list[str], *, env: dict[str, str], log: Path, private_tmp: bool):
        script = (_private_tmp_script() if private_tmp else "") + 'exec "$@"'
        with open(log, "ab") as out:
            self.process = subprocess.Popen([*_UNSHARE, "sh", "-c", script, "node", str(BIN / "ray"), "start",
                                             *ray_args, "--block"], env=env, stdout=out, stderr=subprocess.STDOUT)
        self.namespace = self._own_namespace()

    def _own_namespace(self, timeout_s: float = 30) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # until unshare has made the namespace
            try:
                namespace = os.readlink(f"/proc/{self.process.pid}/ns/mnt")
            except FileNotFoundError:
                namespace = None
            if self.process.poll() is not None:
                raise RuntimeError(f"the node exited with {self.process.returncode} before it started")
            if namespace and namespace != _OWN_NAMESPACE:
                return namespace
            time.sleep(0.01)
        self.process.kill()
        self.process.wait()
        raise RuntimeError(f"no mount namespace of its own after {timeout_s} s")

    def pids(self) -> list[int]:
        """The processes of the node: those whose mount namespace is the node's."""
        out = []
        for entry in os.scandir("/proc"):
            try:
                if entry.name.isdigit() and os.readlink(f"/proc/{entry.name}/ns/mnt") == self.namespace:
                    out.append(int(entry.name))
            except OSError:  # ended meanwhile, or a zombie (it has no namespace left)
                pass
        return out

    def kill(self, timeout_s: float = 30) -> list[int]:
        """SIGKILL every process of the node, as a machine that dies would end them. Returns them."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout_s
        while (alive := self.pids()) and time.monotonic() < deadline:  # again: one may fork meanwhile
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed += [p for p in alive if p not in killed]
            time.sleep(0.05)
        self.process.wait(timeout=timeout_s)
        if alive:
            raise RuntimeError(f"processes {alive} of the node outlived SIGKILL for {timeout_s} s")
        return killed


def alive_worker_nodes(dashboard: str) -> set[str]:
    """Ids of the nodes with CPUs that the cluster counts as alive (the state API of the dashboard)."""
    with urllib.request.urlopen(f"{dashboard}/api/v0/nodes?limit=100", timeout=10) as answer:
        nodes = json.load(answer)["data"]["result"]["result"]
    return {n["node_id"] for n in nodes if n["state"] == "ALIVE" and n["resources_total"].get("CPU")}


def wait_until(condition, what: str, *, timeout_s: float = 120, pause_s: float = 0.3):
    """The first true value of `condition()` (errors count as not yet), or TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (OSError, ValueError, KeyError):  # a server still starting
            value = None
        if value:
            return value
        time.sleep(pause_s)
    raise TimeoutError(f"{what}: not within {timeout_s} s")


class RayCluster:
    """A head (0 CPUs, dashboard on 127.0.0.1) and one worker node with 2 CPUs and a /tmp of its
    own. `env` is the environment of the cluster's processes and of its clients (`ray job
    submit`, `impsweep`); `head_tmp` is the TMPDIR of the head's processes (the job drivers')."""

    def __init__(self, env: dict[str, str], *, head_tmp: Path, logs: Path):
        self.env, self.head_tmp, self.logs = node_env(env), head_tmp, logs
        self.port, self.dashboard_port = free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        # Ray's socket paths must stay short: a temp dir directly under /tmp, not pytest's.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
        self.head: Node | None = None
        self.worker: Node | None = None
        self.workers_started = 0

    def start_head(self) -> None:
        # The GCS declares a node dead after 5 failed health checks, here 1 s apart (default 3 s),
        # so a lost node's resources are released sooner. A dead raylet fails a check at once; a
        # busy one only after the check's 10 s timeout, so a slow node is not taken for lost.
        env = {**self.env, "TMPDIR": str(self.head_tmp), "RAY_health_check_period_ms": "1000",
               "RAY_health_check_failure_threshold": "5"}
        self.head = Node(["--head", f"--port={self.port}", "--node-ip-address=127.0.0.1", "--num-cpus=0",
                          "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                          f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}",
                          f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={self.temp_dir}",
                          "--object-store-memory=200000000", "--disable-usage-stats"],
                         env=env, log=self.logs / "head.log", private_tmp=False)
        wait_until(lambda: urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=5).status == 200,
                   "the Ray head's dashboard")

    def start_worker(self) -> None:
        """A worker node (its TMPDIR unset: /tmp is its own), registered with the head."""
        known = alive_worker_nodes(self.dashboard)
        env = {k: v for k, v in self.env.items() if k != "TMPDIR"}
        self.workers_started += 1
        self.worker = Node([f"--address=127.0.0.1:{self.port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                            f"--dashboard-agent-listen-port={free_port()}", "--object-store-memory=300000000",
                            "--disable-usage-stats"],
                           env=env, log=self.logs / f"worker{self.workers_started}.log", private_tmp=True)
        wait_until(lambda: alive_worker_nodes(self.dashboard) - known, "a new worker node registered")

    def stop(self) -> None:
        for node in (self.worker, self.head):
            if node is not None:
                node.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def submit_command(self, job_dir: Path, *command: str) -> list[str]:
        """`ray job submit --working-dir job_dir -- command`: it waits for the job and tails its log."""
        return [str(BIN / "ray"), "job", "submit", f"--address={self.dashboard}", f"--working-dir={job_dir}", "--",
                *command]

    def submit(self, job_dir: Path, *command: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
        """`submit_command` run to its end."""
        return subprocess.run(self.submit_command(job_dir, *command), env=self.env, capture_output=True, text=True,
                              timeout=timeout_s)
