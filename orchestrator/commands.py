"""What each CLI verb does, given a validated sweep. Each returns the process exit code."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl

from orchestrator.experiments import ensure_ray
from orchestrator.interrupts import EXIT_INTERRUPTED
from orchestrator.launch import prepare_tracking, run_sweep
from orchestrator.plan import plan_sweep
from orchestrator.specs import SpecError, SweepSpec


def _echo(line: str) -> None:
    print(line, flush=True)


def run(sweep: SweepSpec) -> int:
    outcome = run_sweep(sweep, echo=_echo)
    return EXIT_INTERRUPTED if outcome.interrupted else 1 if outcome.failed else 0


def status(sweep: SweepSpec) -> int:
    plans = plan_sweep(sweep)
    frame = pl.DataFrame({
        "lineage_id": [p.lineage_id for p in plans],
        "seed": [p.spec.seed for p in plans],
        "model": [p.spec.model for p in plans],
        "dataset": [p.spec.dataset for p in plans],
        "schedule": [p.spec.prune.schedule for p in plans],
        "state": [p.state for p in plans],
        "levels": [f"{p.levels_done}/{p.n_levels}" for p in plans],
        "test_acc": [p.test_acc for p in plans],
    }, schema_overrides={"test_acc": pl.Float64})
    counts = frame.group_by("state").len().sort("state")
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=40):
        print(frame)
        print(", ".join(f"{s}: {n}" for s, n in counts.iter_rows()))
    return 0


def analyze(sweep: SweepSpec) -> int:
    from analysis.pipeline import run_analysis

    outcome = run_analysis(sweep.name, sweep.analysis, workdir=sweep.workdir,
                           tracking_uri=sweep.resolved_tracking_uri, echo=_echo, connect=ensure_ray)
    for cid, reason in outcome.failed_checkpoints:
        _echo(f"skipped checkpoint {cid}: {reason}")
    _echo(f"analysis {outcome.analysis_id}: {outcome.n_representations} representations, "
          f"{sum(outcome.pairs_computed.values())} new rows in {outcome.wall_s:.1f}s")
    return 1 if outcome.failed_checkpoints else 0


def report(sweep: SweepSpec) -> int:
    from analysis.report import write_report

    try:
        path = write_report(sweep.workdir, sweep.name, tracking_uri=sweep.resolved_tracking_uri)
    except ValueError as err:  # e.g. a sweep with no analysed lineages yet
        raise SpecError([f"report: {err}"], "report") from None
    print(f"report: {path}", flush=True)
    return 0


def query(sweep: SweepSpec, sql: str, *, fmt: str = "table", output: Path | None = None) -> int:
    from analysis.tables import scan_tables

    context = pl.SQLContext(scan_tables(sweep.workdir), eager=True)
    try:
        result = context.execute(sql)
    except Exception as err:  # polars raises several SQL error types; all are bad input here
        raise SpecError([f"query: {err}"], "query") from None
    if fmt == "parquet":
        if output is None:
            raise SpecError(["--format parquet needs --output FILE"], "query")
        result.write_parquet(output)
    elif fmt == "csv":
        text = result.write_csv()
        output.write_text(text) if output else sys.stdout.write(text)
    elif fmt == "json":
        text = result.write_json()
        output.write_text(text) if output else sys.stdout.write(text + "\n")
    else:
        with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=60):
            print(result)
    return 0


def ui(sweep: SweepSpec, *, host: str = "127.0.0.1", port: int = 5000) -> int:
    _, experiment_id = prepare_tracking(sweep)
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow, "ui", "--backend-store-uri", sweep.resolved_tracking_uri, "--host", host, "--port", str(port)]
    if not sweep.tracking_uri:
        cmd += ["--default-artifact-root", sweep.artifact_location]
    print(f"MLflow UI: http://{host}:{port}/#/experiments/{experiment_id}/runs  (Ctrl-C stops it)", flush=True)
    return subprocess.call(cmd)


def demo(sweep: SweepSpec, sql: str) -> int:
    code = run(sweep)
    if code:
        return code
    code = analyze(sweep)
    if code:
        return code
    print("\nMean similarity to the dense network of the same lineage, over seeds:", flush=True)
    return query(sweep, sql)
