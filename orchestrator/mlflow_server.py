"""A local `mlflow server` process: started on 127.0.0.1, health-checked, stopped by PID.

For sweeps too large for an embedded SQLite store the tracking URI points at a server; tests and
single-machine users start one with this.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`with MlflowServer(backend_uri, artifact_root) as server: server.uri` — a running server.

    backend_uri: e.g. `sqlite:///path/mlflow.db` or `postgresql://...`.
    artifact_root: where clients write artifacts themselves (a folder, `s3://...`); or None with
        `artifacts_destination`, e.g. `s3://bucket/prefix`, where the server stores the artifacts
        that clients upload through it (`--serve-artifacts`: clients need no storage credentials).
    """

    def __init__(self, backend_uri: str, artifact_root: str | Path | None = None, *, artifacts_destination: str = "",
                 host: str = "127.0.0.1", port: int | None = None, startup_timeout_s: float = 120.0,
                 log_path: Path | None = None):
        if (artifact_root is None) == (not artifacts_destination):
            raise ValueError("MlflowServer: give exactly one of artifact_root and artifacts_destination "
                             f"(got {artifact_root!r} and {artifacts_destination!r})")
        self.backend_uri, self.artifact_root = backend_uri, None if artifact_root is None else str(artifact_root)
        self.artifacts_destination = artifacts_destination
        self.host, self.port = host, port or free_port(host)
        self.startup_timeout_s, self.log_path = startup_timeout_s, log_path
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, *, wait: bool = True) -> MlflowServer:
        """Launch the server; with `wait`, return once it answers (else call `wait_healthy`)."""
        mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
        cmd = [mlflow, "server", "--host", self.host, "--port", str(self.port),
               "--backend-store-uri", self.backend_uri, "--workers", "1"]
        if self.artifacts_destination:  # experiments then get the server's mlflow-artifacts:/ root
            cmd += ["--serve-artifacts", "--artifacts-destination", self.artifacts_destination]
        else:
            cmd += ["--default-artifact-root", self.artifact_root]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        # Its own session, so that stop() can end the server and the workers it forks together.
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self) -> None:
        """Return once `/health` answers; stop the server and raise if it exits or times out."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with code {self.process.returncode} ({self.uri})")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"mlflow server at {self.uri} not healthy after {self.startup_timeout_s:.0f}s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        except ProcessLookupError:
            pass

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
