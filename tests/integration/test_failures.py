"""Failures a long sweep meets: its driver killed mid-sweep (grid or search), Ctrl-C. (A worker
node lost mid-sweep: tests/integration/test_cluster.py.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator import load_sweep, plan_sweep, run_sweep
from tests.integration.conftest import (
    final_metrics, is_loopback, listening_sockets, mlflow_runs, reference_metrics, tiny_sweep,
)
from trainables.checkpoints import LineageCheckpoints
from trainables import layout
from trainables.tracking import KIND_LEVEL, KIND_LINEAGE, search_all, tag_filter

pytestmark = pytest.mark.integration

TRAIN = {"lr": 0.05, "batch_size": 128, "epochs": 6}


def _levels_done(workdir) -> int:
    root = workdir / "lineages"
    return sum(len(LineageCheckpoints(workdir, p.name).complete_levels()) for p in root.glob("c*")) if root.exists() else 0


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
    assert 1 <= _levels_done(Path(sweep.workdir)) < 6
    assert any(p.state != "done" for p in plan_sweep(sweep))
    outcome = run_sweep(sweep, echo=lambda _: None)
    assert outcome.failed == () and all(p.state == "done" for p in plan_sweep(sweep))
    runs = mlflow_runs(sweep.resolved_tracking_uri)
    kinds = sorted(r.data.tags["impsweep.kind"] for r in runs)
    assert kinds == ["level"] * 6 + ["lineage"] * 2  # no duplicate parent or child run
    assert final_metrics(sweep.resolved_tracking_uri) == reference_metrics(sweep, tmp_path / "ref")


# A search sweep whose driver is killed: 12 lineages of 3 levels, 2 at a time. Optuna's TPE
# samples its first 10 points at random and then from a model of the results so far: the kill
# comes once an 11th lineage, proposed by the model, has started.
SEARCH = {"space": {"train.lr": {"type": "loguniform", "low": 0.01, "high": 0.2}}, "num_samples": 12, "seed": 3}
SEARCH_LEVELS = 3
KILL_AT = 11


def _lineage_levels(workdir) -> dict[str, int]:
    """lineage id -> its complete levels, for every lineage folder under the workdir."""
    root = workdir / "lineages"
    return {p.name: len(LineageCheckpoints(workdir, p.name).complete_levels()) for p in root.glob("c*")} if root.exists() else {}


def _remember_family(proc: subprocess.Popen, family: dict[int, psutil.Process]) -> None:
    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            family.setdefault(child.pid, child)
    except psutil.NoSuchProcess:
        pass


def _end_family(family: dict[int, psutil.Process]) -> list[int]:
    """SIGKILL every process still alive that a driver started, and whatever those started in
    turn (Ray's daemons outlive a killed driver). Returns the PIDs that were still alive."""
    ended: list[int] = []
    while alive := [p for p in family.values() if p.is_running() and p.pid not in ended]:
        for proc in alive:
            try:
                for child in proc.children(recursive=True):
                    family.setdefault(child.pid, child)
                proc.kill()
            except psutil.NoSuchProcess:
                pass
            ended.append(proc.pid)
        psutil.wait_procs(alive, timeout=10)
    return ended


def _finished_level_runs(client) -> dict[str, tuple[str, int]]:
    """checkpoint id -> (run id, end time) of every FINISHED level run."""
    return {r.data.tags["impsweep.checkpoint_id"]: (r.info.run_id, r.info.end_time)
            for r in search_all(client, tag_filter(kind=KIND_LEVEL)) if r.info.status == "FINISHED"}


def test_search_driver_killed_then_resumed_ends_with_num_samples_lineages(tmp_path):
    workdir = tmp_path / "w"
    raw = tiny_sweep(workdir, name="optuna", prune={"rate": 0.2, "levels": SEARCH_LEVELS - 1, "exclude": ["bias"]})
    raw.pop("grid")
    raw["search"] = SEARCH
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "orchestrator", "run", str(path)]
    family: dict[int, psutil.Process] = {}
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # Kill the driver as the 11th lineage starts: its trial is likely younger than Tune's
        # last experiment snapshot (taken every 10 s), and the model that proposed it had seen
        # more results than the snapshot's study holds.
        deadline, looked = time.monotonic() + 180, 0.0
        while time.monotonic() < deadline and driver.poll() is None:
            levels = _lineage_levels(workdir)
            if len(levels) >= KILL_AT and SEARCH_LEVELS in levels.values():
                break
            if time.monotonic() - looked > 0.5:
                _remember_family(driver, family)
                looked = time.monotonic()
            time.sleep(0.02)
        assert driver.poll() is None, "the search finished (or failed) before it could be interrupted"
        _remember_family(driver, family)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        _end_family(family)
    assert not [p for p in family.values() if p.is_running()]

    sweep = load_sweep(path)
    client = MlflowClient(sweep.resolved_tracking_uri)
    before = _lineage_levels(workdir)
    assert any(n < SEARCH_LEVELS for n in before.values()), before
    checkpoints = {(lid, level): (workdir / layout.level_dir(lid, level) / "state.pt").stat().st_mtime_ns
                   for lid, n in before.items() for level in LineageCheckpoints(workdir, lid).complete_levels()}
    finished_runs = _finished_level_runs(client)

    family = {}
    log_path = tmp_path / "resumed.log"
    with log_path.open("w") as out:  # a file, not a pipe: a full pipe would block the driver
        resumed = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        while resumed.poll() is None:
            _remember_family(resumed, family)
            time.sleep(0.2)
        log = log_path.read_text()
    finally:
        if resumed.poll() is None:
            resumed.kill()
        resumed.wait(timeout=30)
        psutil.wait_procs([p for p in family.values() if p.is_running()], timeout=15)
        left = _end_family(family)
    assert resumed.returncode == 0, log
    assert not left, f"processes left by a driver that exited normally: {left}"

    lineages = set(_lineage_levels(workdir))
    parents = search_all(client, f"{tag_filter(kind=KIND_LINEAGE)} and tags.`impsweep.sweep.optuna` = '1'")
    assert len(lineages) == SEARCH["num_samples"], log
    assert sorted(r.data.tags["impsweep.lineage_id"] for r in parents) == sorted(lineages), log
    assert set(before) <= lineages  # the lineages proposed before the kill are kept
    levels = search_all(client, tag_filter(kind=KIND_LEVEL))
    assert sorted(r.data.tags["impsweep.checkpoint_id"] for r in levels) == sorted(
        f"{lid}/L{level:02d}" for lid in lineages for level in range(SEARCH_LEVELS))  # no duplicate child run
    assert all(r.info.status == "FINISHED" for r in parents + levels)
    assert all(p.state == "done" for p in plan_sweep(sweep)) and len(plan_sweep(sweep)) == SEARCH["num_samples"]
    # Nothing finished before the kill was computed or logged again.
    assert {key: (workdir / layout.level_dir(*key) / "state.pt").stat().st_mtime_ns for key in checkpoints} == checkpoints
    assert {cid: run for cid, run in _finished_level_runs(client).items() if cid in finished_runs} == finished_runs


def _remember_families(procs: list[subprocess.Popen], family: dict[int, psutil.Process], *,
                       until: Callable[[], bool]) -> None:
    """Remember what `procs` start until `until()` holds or none of them runs any more."""
    while not until() and any(proc.poll() is None for proc in procs):
        for proc in procs:
            _remember_family(proc, family)
        time.sleep(0.1)


def _interrupt_at(command: list[str], marker: str) -> tuple[int, str, list, list[int]]:
    """Run `command` in a session of its own, press Ctrl-C there once a line of its output holds
    `marker`, and wait for it. Returns its exit code, its output, the sockets its process tree
    listened on, and the processes it left behind (ended here)."""
    family: dict[int, psutil.Process] = {}
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    watchdog = threading.Timer(300, os.killpg, args=(driver.pid, signal.SIGKILL))
    watchdog.start()
    try:
        lines = []
        for line in driver.stdout:
            lines.append(line)
            if marker in line:
                break
        _remember_family(driver, family)
        os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        # Ray's processes outlive the SIGINT by seconds (Tune's graceful stop, the driver's exit)
        sockets = listening_sockets(driver.pid)
        out = "".join(lines) + driver.communicate(timeout=240)[0]
    finally:
        watchdog.cancel()
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        psutil.wait_procs([p for p in family.values() if p.is_running()], timeout=15)
        left = _end_family(family)
    return driver.returncode, out, sockets, left


def _run_twice_at_once(command: list[str], *, workdir: Path, lineage: str,
                       logs: list[Path]) -> tuple[list[int], int]:
    """Start `command` twice at once while `lineage`'s lock is held here, until both runs'
    trials of the lineage wait for it (or 240 s pass), so that both start before either has
    logged one of its levels. Returns the exit codes and how many trials waited."""
    drivers, family = [], {}
    lock = workdir / layout.lineage_lock(lineage)
    try:
        with LineageCheckpoints(workdir, lineage).lock():
            for log in logs:
                with log.open("w") as out:  # a file, not a pipe: a full pipe would block the driver
                    drivers.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 240
            _remember_families(drivers, family, until=lambda: _flock_waiters(lock) == 2 or time.monotonic() > deadline)
            waiting = _flock_waiters(lock)
        _remember_families(drivers, family, until=lambda: False)
    finally:
        for driver in drivers:
            if driver.poll() is None:
                driver.kill()
            driver.wait(timeout=30)
        psutil.wait_procs([p for p in family.values() if p.is_running()], timeout=15)
        _end_family(family)
    return [d.returncode for d in drivers], waiting


def test_ctrl_c_stops_the_run_and_two_runs_then_finish_it_once(tmp_path):
    """Ctrl-C while the first of two chunks trains: Tune ends that experiment gracefully, no
    later chunk starts, `impsweep run` exits 130 and says how to resume. Two runs started at once
    then finish the sweep, with one MLflow run per lineage and per level. Meanwhile the
    interrupted run's Ray instance listens on loopback only."""
    workdir = tmp_path / "w"
    raw = tiny_sweep(workdir, name="ctrlc", chunk_size=1, max_concurrent=1,
                     train={"lr": 0.05, "batch_size": 128, "epochs": 12},
                     prune={"rate": 0.2, "levels": 1, "exclude": ["bias"]})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    first, later = (p.lineage_id for p in plan_sweep(load_sweep(path)))  # chunk 1, chunk 2
    command = [str(Path(sys.executable).with_name("impsweep")), "run", str(path)]
    code, out, sockets, left = _interrupt_at(command, f"{first} L00: ")
    assert code == 130, out
    assert f"run `impsweep run {path}` again to resume" in out, out
    assert not left, f"processes left by an interrupted driver: {left}"
    assert any(name.startswith("raylet") for name, _, _ in sockets), sockets
    assert [s for s in sockets if not is_loopback(s[1])] == []
    # nothing of the later chunk started; the interrupted lineage's parent run is closed
    assert not (workdir / "ray" / "ctrlc" / later).exists() and not (workdir / "lineages" / later).exists(), out
    client = MlflowClient(load_sweep(path).resolved_tracking_uri)
    status = {r.data.tags["impsweep.lineage_id"]: r.info.status for r in search_all(client, tag_filter(kind=KIND_LINEAGE))}
    assert status[later] == "SCHEDULED", out
    assert status[first] in ("KILLED", "FINISHED"), out  # FINISHED: its last level landed in Tune's grace period

    # Both runs in one Tune experiment each: a chunk per lineage would start a trial worker each.
    logs = [tmp_path / f"resume{k}.log" for k in range(2)]
    codes, waiting = _run_twice_at_once(command + ["--set", "chunk_size=2"], workdir=workdir, lineage=later, logs=logs)
    out = "\n".join(log.read_text() for log in logs)
    assert waiting == 2, out
    assert codes == [0, 0], out
    assert [p.state for p in plan_sweep(load_sweep(path))] == ["done", "done"]
    # one parent run per lineage, one FINISHED level run per checkpoint: none duplicated
    parents = search_all(client, tag_filter(kind=KIND_LINEAGE))
    assert sorted(r.data.tags["impsweep.lineage_id"] for r in parents) == sorted((first, later))
    levels = search_all(client, tag_filter(kind=KIND_LEVEL))
    assert sorted((r.data.tags["impsweep.checkpoint_id"], r.info.status) for r in levels) == [
        (f"{lid}/L{level:02d}", "FINISHED") for lid in sorted((first, later)) for level in range(2)], out


def _flock_waiters(path: Path) -> int:
    """How many processes wait for the flock on `path` (Linux /proc/locks marks them '->')."""
    if not path.exists():
        return 0
    stat = path.stat()
    key = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if " -> " in line and key in line.split())
