"""A `ray job submit --working-dir` entrypoint leaves the working directory Ray may replace: it runs
from an absolute workdir (a shared disk), or from a scratch folder when the workdir is an object
store, and refuses a relative workdir."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from orchestrator.cli import leave_job_working_dir
from orchestrator.specs import SpecError, load_sweep

BASE = {"name": "job", "model": "lenet_300_100", "dataset": "digits", "train": {"epochs": 1},
        "prune": {"levels": 1}}


@pytest.fixture
def in_a_job(tmp_path, monkeypatch) -> Path:
    """This process as a job entrypoint standing in its working dir (restored afterwards)."""
    job = tmp_path / "job"
    job.mkdir()
    monkeypatch.chdir(job)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": str(job)}}))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    return job


def test_a_job_runs_from_its_absolute_workdir(in_a_job, tmp_path):
    sweep = load_sweep({**BASE, "workdir": str(tmp_path / "shared" / "w")})
    leave_job_working_dir(sweep)
    assert Path.cwd() == tmp_path / "shared" / "w"


def test_a_job_with_an_object_store_workdir_runs_from_a_scratch_folder(in_a_job, tmp_path):
    sweep = load_sweep({**BASE, "workdir": "s3://bucket/w", "tracking_uri": "http://127.0.0.1:5000"})
    leave_job_working_dir(sweep)
    assert Path.cwd().parent == tmp_path / "scratch" and os.listdir(Path.cwd()) == []


def test_a_job_refuses_a_relative_workdir(in_a_job):
    with pytest.raises(SpecError, match="is relative, but this runs as a Ray job"):
        leave_job_working_dir(load_sweep({**BASE, "workdir": "runs/w"}))
    assert Path.cwd() == in_a_job


def test_outside_a_job_nothing_moves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    leave_job_working_dir(load_sweep({**BASE, "workdir": "runs/w"}))
    assert Path.cwd() == tmp_path and not (tmp_path / "runs").exists()
