"""Sweeps on real Ray and MLflow: search, a shared lineage, a trial killed, fused lineages. (Against a
real mlflow server, with Tune storage on S3: tests/integration/test_cluster.py.)"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from orchestrator import load_sweep, plan_sweep, run_sweep
from tests.integration.conftest import (
    final_metrics, is_loopback, listening_sockets, mlflow_runs, reference_metrics, tiny_sweep,
)
from trainables.checkpoints import LineageCheckpoints

pytestmark = pytest.mark.integration


def _kinds(runs):
    return sorted(r.data.tags.get("impsweep.kind") for r in runs)


def test_optuna_search_runs_num_samples_and_resumes_nothing(tmp_path, ray_shutdown):
    raw = tiny_sweep(tmp_path, name="search")
    raw.pop("grid")
    raw["search"] = {"space": {"train.lr": {"type": "loguniform", "low": 0.01, "high": 0.2},
                               "seed": {"type": "choice", "values": [0, 1, 2, 3]}},
                     "num_samples": 3, "seed": 1}
    sweep = load_sweep(raw)
    outcome = run_sweep(sweep, echo=lambda _: None)
    assert outcome.failed == ()
    plans = plan_sweep(sweep)
    assert 1 <= len(plans) <= 3 and all(p.state == "done" for p in plans)  # a repeated point runs once
    parents = [r for r in mlflow_runs(sweep.resolved_tracking_uri) if r.data.tags["impsweep.kind"] == "lineage"]
    assert len(parents) == len(plans)
    for parent in parents:
        assert 0.01 <= float(parent.data.params["train.lr"]) <= 0.2
        assert parent.data.tags["impsweep.sweep.search"] == "1"
    before = _kinds(mlflow_runs(sweep.resolved_tracking_uri))
    run_sweep(sweep, echo=lambda _: None)
    assert _kinds(mlflow_runs(sweep.resolved_tracking_uri)) == before


def _tune_results(trial_dir) -> list[dict]:
    """Every result a trial reported to Tune, in order."""
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def test_long_levels_report_epochs_and_a_search_still_sees_levels(tmp_path, ray_shutdown):
    """With report_every_s: 0 every progress checkpoint of a level is also a Tune report (2 in a
    level of 3 epochs). Optuna and ASHA need the metric in each of them, and must see levels only:
    an epoch report repeats the last complete level (its metrics and checkpoint pointer)."""
    raw = tiny_sweep(tmp_path, name="epochs", train={"lr": 0.05, "batch_size": 128, "epochs": 3}, report_every_s=0,
                     prune={"rate": 0.2, "levels": 1, "exclude": ["bias"]})
    raw.pop("grid")
    raw["search"] = {"space": {"train.lr": {"type": "loguniform", "low": 0.01, "high": 0.2}},
                     "num_samples": 3, "seed": 1, "asha": {"grace_period": 1, "reduction_factor": 2}}
    sweep = load_sweep(raw)
    lines: list[str] = []
    outcome = run_sweep(sweep, echo=lines.append)
    assert outcome.failed == () and outcome.n_lineages == 3
    assert any("[3/3 done" in line for line in lines)
    trials = [p for p in (Path(sweep.workdir) / "ray" / "epochs").iterdir() if p.is_dir()]
    assert len(trials) == 3  # exactly num_samples lineages
    for trial in trials:
        results = _tune_results(trial)
        levels = [r for r in results if r["kind"] == "level"]
        assert [r["level"] for r in levels] == [0, 1]
        assert [r["kind"] for r in results] == ["epoch", "epoch", "level"] * len(levels)
        assert results[-1]["kind"] == "level"  # the result Optuna takes as the trial's value
        for r in results[:2]:  # level 0 in training: no level is complete yet
            assert (r["level"], r["training_level"]) == (-1, 0) and math.isnan(r["test_acc"])
            assert r.get("checkpoint_dir_name") is None
        for k, level in enumerate(levels[:-1]):
            for r in results[3 * k + 3 : 3 * k + 5]:
                assert (r["level"], r["training_level"], r["training_epoch"]) == (k, k + 1, r["training_epoch"])
                assert r["test_acc"] == level["test_acc"] and r["sparsity"] == level["sparsity"]
                pointer = json.loads((trial / r["checkpoint_dir_name"] / "pointer.json").read_text())
                assert pointer["level"] == k
        assert [r["training_epoch"] for r in results if r["kind"] == "epoch"] == [1, 2] * len(levels)


def test_asha_stops_are_recorded_and_a_restarted_search_keeps_them(tmp_path, ray_shutdown):
    """ASHA stops a lineage at a rung without its trainable returning. The driver records the
    stop on the parent run (closed FINISHED), `status` counts it as stopped, and a restarted
    search that rebuilds its study from MLflow (Tune's experiment lost) neither resumes it nor
    proposes another lineage in its place."""
    raw = tiny_sweep(tmp_path, name="asha", max_concurrent=1, prune={"rate": 0.2, "levels": 3, "exclude": ["bias"]})
    raw.pop("grid")
    # lr 1e-5 learns nothing: below the rung's median it is stopped, whatever the order
    raw["search"] = {"space": {"train.lr": {"type": "choice", "values": [0.1, 1e-5]},
                               "seed": {"type": "int", "low": 0, "high": 10**6}},
                     "num_samples": 4, "seed": 3, "asha": {"grace_period": 1, "reduction_factor": 2}}
    sweep = load_sweep(raw)
    lines: list[str] = []
    assert run_sweep(sweep, echo=lines.append).failed == ()
    plans = plan_sweep(sweep)
    stopped = [p for p in plans if p.state == "stopped"]
    assert len(plans) == 4 and stopped, [(p.lineage_id, p.state) for p in plans]
    assert all(p.state in ("done", "stopped") for p in plans)
    parents = {r.data.tags["impsweep.lineage_id"]: r for r in mlflow_runs(sweep.resolved_tracking_uri)
               if r.data.tags["impsweep.kind"] == "lineage"}
    assert all(r.info.status == "FINISHED" for r in parents.values()), [
        (lid, r.info.status, r.data.tags.get("impsweep.stopped.asha")) for lid, r in parents.items()]
    for plan in stopped:
        assert plan.levels_done < plan.n_levels
        assert parents[plan.lineage_id].data.tags["impsweep.stopped.asha"] == str(plan.levels_done - 1)
        assert any(line.endswith(f"{plan.lineage_id} stopped by the scheduler after L{plan.levels_done - 1:02d}")
                   for line in lines)
    levels = {p.lineage_id: LineageCheckpoints(sweep.workdir, p.lineage_id).complete_levels() for p in plans}
    runs_before = sorted(r.info.run_id for r in mlflow_runs(sweep.resolved_tracking_uri))
    shutil.rmtree(Path(sweep.workdir) / "ray" / "asha")  # no Tune state: rebuilt from the plan
    outcome = run_sweep(sweep, echo=lambda _: None)
    assert (outcome.n_lineages, outcome.ran) == (4, 0)
    assert {p.lineage_id: LineageCheckpoints(sweep.workdir, p.lineage_id).complete_levels() for p in plan_sweep(sweep)} == levels
    assert sorted(r.info.run_id for r in mlflow_runs(sweep.resolved_tracking_uri)) == runs_before


def test_a_search_runs_in_chunks_of_bounded_experiments(tmp_path, ray_shutdown):
    """chunk_size bounds a search's Tune experiments as it bounds a grid's: 5 samples in chunks
    of 2 are three experiments, each a study rebuilt from the lineages finished before it, and
    the sweep ends with exactly 5 distinct lineages."""
    raw = tiny_sweep(tmp_path, name="chunked", chunk_size=2, prune={"rate": 0.2, "levels": 1, "exclude": ["bias"]})
    raw.pop("grid")
    raw["search"] = {"space": {"train.lr": {"type": "loguniform", "low": 0.01, "high": 0.2}},
                     "num_samples": 5, "seed": 2}
    sweep = load_sweep(raw)
    lines: list[str] = []
    outcome = run_sweep(sweep, echo=lines.append)
    assert (outcome.failed, outcome.n_lineages, outcome.ran) == ((), 5, 5)
    assert [line.split(": ", 1)[1] for line in lines if ": chunk " in line] == [
        "chunk 1 (2 of 5 lineages to run)", "chunk 2 (2 of 3 lineages to run)", "chunk 3 (1 of 1 lineages to run)"]
    plans = plan_sweep(sweep)
    assert len(plans) == 5 and all(p.state == "done" for p in plans)
    assert len({p.spec.train.lr for p in plans}) == 5
    parents = [r for r in mlflow_runs(sweep.resolved_tracking_uri) if r.data.tags["impsweep.kind"] == "lineage"]
    assert sorted(r.data.tags["impsweep.lineage_id"] for r in parents) == sorted(p.lineage_id for p in plans)
    assert all(r.info.status == "FINISHED" for r in parents)


def test_overlapping_sweeps_share_a_lineage(tmp_path, ray_shutdown):
    first = load_sweep(tiny_sweep(tmp_path, name="first"))
    second = load_sweep(tiny_sweep(tmp_path, name="second", grid={"seed": [1, 2]}))
    run_sweep(first, echo=lambda _: None)
    outcome = run_sweep(second, echo=lambda _: None)
    assert (outcome.already_done, outcome.ran) == (1, 1)
    parents = [r for r in mlflow_runs(first.resolved_tracking_uri) if r.data.tags["impsweep.kind"] == "lineage"]
    assert len(parents) == 3
    shared = [r for r in parents if r.data.tags.get("impsweep.sweep.first") and r.data.tags.get("impsweep.sweep.second")]
    assert [r.data.tags["impsweep.seed"] for r in shared] == ["1"]


def _kill_a_trial_once(workdir, killed: list) -> None:
    """Kill the Ray worker running a lineage (as an OOM kill would) once its level 0 is done."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not killed:
        lineages = list((workdir / "lineages").glob("c*")) if (workdir / "lineages").exists() else []
        if any(LineageCheckpoints(workdir, p.name).complete_levels() == [0] for p in lineages):
            for proc in psutil.process_iter(["cmdline", "name"]):
                title = " ".join(proc.info["cmdline"] or [])
                if "ImplicitFunc" in title or "lineage_trainable" in title:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                    return
        time.sleep(0.05)


def test_killed_trial_is_retried_and_ends_as_if_undisturbed(tmp_path, ray_shutdown):
    sweep = load_sweep(tiny_sweep(tmp_path / "cut", train={"lr": 0.05, "batch_size": 128, "epochs": 6}))
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_trial_once, args=(Path(sweep.workdir), killed), daemon=True)
    killer.start()
    outcome = run_sweep(sweep, echo=lambda _: None)
    killer.join(timeout=1)
    assert killed, "no trial worker was found to kill"
    assert outcome.failed == ()
    assert final_metrics(sweep.resolved_tracking_uri) == reference_metrics(sweep, tmp_path / "ref")
    assert _kinds(mlflow_runs(sweep.resolved_tracking_uri)) == ["level"] * 6 + ["lineage"] * 2


def test_fused_bundle_keeps_per_lineage_records(tmp_path, ray_shutdown):
    from trainables import load_checkpoint

    sweep = load_sweep(tiny_sweep(tmp_path / "w", name="fused", fuse=2, report_every_s=0))
    lines: list[str] = []
    outcome = run_sweep(sweep, echo=lines.append)
    assert outcome.failed == ()
    assert any("[2/2 done" in line for line in lines)
    # the local Ray instance run_sweep started in this process listens on loopback only
    sockets = listening_sockets(os.getpid())
    assert any(name.startswith("raylet") for name, _, _ in sockets), sockets
    assert [s for s in sockets if not is_loopback(s[1])] == []
    runs = mlflow_runs(sweep.resolved_tracking_uri)
    assert _kinds(runs) == ["level"] * 6 + ["lineage"] * 2
    plans = plan_sweep(sweep)
    assert all(p.state == "done" for p in plans)
    for plan in plans:
        for level in range(3):
            stored = load_checkpoint(Path(sweep.workdir) / "lineages" / plan.lineage_id / f"L{level:02d}")
            assert stored.fused
    trial_dirs = {p.name for p in (Path(sweep.workdir) / "ray" / "fused").iterdir() if p.is_dir()}
    assert f"{plans[0].lineage_id}-x2" in trial_dirs  # one Ray trial for the bundle
    # every lineage of the bundle reports its long levels' epochs, and its levels, in order
    results = _tune_results(Path(sweep.workdir) / "ray" / "fused" / f"{plans[0].lineage_id}-x2")
    for plan in plans:
        mine = [r for r in results if r["lineage_id"] == plan.lineage_id]
        assert [(r["kind"], r.get("training_level", r["level"])) for r in mine] == [
            ("epoch", 0), ("level", 0), ("epoch", 1), ("level", 1), ("epoch", 2), ("level", 2)]
