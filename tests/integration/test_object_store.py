"""A sweep whose workdir is an S3 prefix, on one machine against a real S3-compatible server:
run, status, analyze, query and report work on it; training equals the same lineages on a local
disk, the analysis rows equal a local analysis of the same checkpoints; nothing is written to the
local disk but the tracking database the sweep names."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import boto3
import pytest

from analysis import AnalysisSpec, run_analysis, scan_tables
from orchestrator import commands, load_sweep, plan_sweep, run_sweep
from orchestrator.specs import SpecError
from tests.integration.conftest import BUCKET, final_metrics, reference_metrics, tiny_sweep
from trainables import layout
from trainables.storage import COMMIT_MARKER, open_store

pytestmark = pytest.mark.integration

FAST = {"neurons": False, "receptive_fields": False, "sharpness": False}
ROWS = ["measure", "a_checkpoint_id", "a_layer", "b_checkpoint_id", "b_layer", "value", "status"]


def _download(workdir: str, into: Path) -> None:
    """Every file of an object-store workdir, at the same keys under a local folder."""
    store = open_store(workdir)
    for key in store.list_files(""):
        (into / key).parent.mkdir(parents=True, exist_ok=True)
        (into / key).write_bytes(store.read_bytes(key))


def test_a_sweep_on_s3_runs_analyses_and_answers_queries_like_one_on_disk(
        moto_endpoint, tmp_path, monkeypatch, capsys, ray_shutdown):
    workdir = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/sweep"
    analysis = {**FAST, "measures": ["linear_cka", "pwcca"], "scope": "lineage"}
    raw = tiny_sweep(workdir, name="ons3", tracking_uri=f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}",
                     analysis=analysis, prune={"rate": 0.2, "levels": 1, "exclude": ["bias"]})
    (tmp_path / "tracking").mkdir()
    scratch = tmp_path / "cwd"
    scratch.mkdir()
    monkeypatch.chdir(scratch)  # nothing may land where a command runs
    sweep = load_sweep(raw)
    assert run_sweep(sweep, echo=lambda _: None).failed == ()
    assert [p.state for p in plan_sweep(sweep)] == ["done", "done"]
    assert final_metrics(sweep.resolved_tracking_uri) == reference_metrics(sweep, tmp_path / "ref")

    assert commands.analyze(sweep) == 0
    assert commands.query(sweep, "SELECT COUNT(*) AS n FROM similarity", fmt="json") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == [{"n": 2 * 2 * 3 * 3}]
    assert commands.report(sweep) == 0
    index = open_store(workdir).read_bytes(f"{layout.report_dir('ons3')}/index.html")
    assert b"<img" in index
    assert sorted(os.listdir(scratch)) == []
    assert sorted(p.name for p in (tmp_path / "tracking").iterdir()) == ["mlflow.db"]  # artifacts went to S3

    # the same checkpoints analysed on a local disk give the same rows
    local = tmp_path / "local"
    _download(workdir, local)
    run_analysis("ons3", AnalysisSpec(**analysis), workdir=local, tracking_uri=sweep.resolved_tracking_uri,
                 echo=lambda _: None)
    on_s3 = scan_tables(workdir)["similarity"].collect().select(ROWS).sort(ROWS[:5])
    on_disk = scan_tables(local)["similarity"].collect().select(ROWS).sort(ROWS[:5])
    assert on_s3.height == 36 and on_s3.equals(on_disk)
    keys = [o["Key"] for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=workdir.split(BUCKET + "/")[1]) for o in page.get("Contents", [])]
    assert any(k.endswith(f"L01/{COMMIT_MARKER}") for k in keys)  # levels committed by a marker
    assert any("/ray/ons3/" in k for k in keys) and any("/artifacts/" in k for k in keys)


def test_a_level_whose_upload_was_cut_off_is_invisible_and_trained_again(moto_endpoint, tiny_spec):
    from trainables import LineageCheckpoints, run_lineage

    workdir = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/cut"
    spec = tiny_spec(prune={"levels": 1})
    whole = run_lineage(spec, workdir=workdir)
    store = open_store(workdir)
    level = layout.level_dir(whole.lineage_id, 1)
    store.delete(f"{level}/{COMMIT_MARKER}")  # what an upload killed before its marker leaves
    store.delete(f"{level}/spec.json")
    stored = LineageCheckpoints(workdir, whole.lineage_id)
    assert stored.complete_levels() == [0]
    again = run_lineage(spec, workdir=workdir)
    assert [lv.resumed for lv in again.levels] == [True, False]
    def trained(level):  # what training computes (wall-clock time aside)
        return {k: v for k, v in level.metrics.items() if k != "wall_s"}

    assert trained(again.levels[1]) == trained(whole.levels[1]) and stored.complete_levels() == [0, 1]


@pytest.mark.parametrize("fields, message", [
    ({"workdir": "gs://bucket/w"}, "scheme 'gs' is not supported"),
    ({"workdir": "s3://bucket/w"}, "needs an explicit tracking_uri"),
    ({"workdir": "s3://No_Bucket/w", "tracking_uri": "sqlite:///x.db"}, "is not an S3 bucket name"),
])
def test_workdirs_that_cannot_work_are_refused_before_anything_runs(tmp_path, fields, message):
    raw = {**tiny_sweep(tmp_path / "w"), **fields}
    with pytest.raises(SpecError, match=message):
        load_sweep(raw)
    assert not Path("gs:").exists() and not Path("s3:").exists()  # never a local folder named after a URI
