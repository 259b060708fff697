"""What each CLI verb does, given a validated sweep. Each returns the process exit code."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl

from orchestrator.experiments import ensure_ray
from orchestrator.interrupts import EXIT_INTERRUPTED
from orchestrator.launch import prepare_tracking, run_sweep
from orchestrator.plan import plan_sweep
from orchestrator.query import DEFAULT_LIMIT, default_max_memory_bytes, run_query
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

    outcome = run_analysis(sweep.name, sweep.analysis, workdir=sweep.store,
                           tracking_uri=sweep.resolved_tracking_uri, echo=_echo, connect=ensure_ray)
    for cid, reason in outcome.failed_checkpoints:
        _echo(f"skipped checkpoint {cid}: {reason}")
    for cid, layer, reason in outcome.skipped_representations:
        again = " (its activations are extracted again by the next analyze)" if reason != "nonfinite" else ""
        _echo(f"skipped representation {cid} {layer}: activation {reason}, its pairs are null{again}")
    _echo(f"analysis {outcome.analysis_id}: {outcome.n_representations} representations, "
          f"{sum(outcome.pairs_computed.values())} new rows in {outcome.wall_s:.1f}s")
    return 1 if outcome.failed_checkpoints or outcome.skipped_representations else 0


def report(sweep: SweepSpec) -> int:
    from analysis.repair import set_aside_garbled_tables
    from analysis.report import write_report

    for line in set_aside_garbled_tables(sweep.store):
        _echo(line)
    try:
        path = write_report(sweep.store, sweep.name, tracking_uri=sweep.resolved_tracking_uri)
    except ValueError as err:  # e.g. a sweep with no analysed lineages yet
        raise SpecError([f"report: {err}"], "report") from None
    print(f"report: {path}", flush=True)
    return 0


def query(sweep: SweepSpec, sql: str, *, fmt: str = "table", output: Path | None = None,
          limit: int = DEFAULT_LIMIT, max_memory_gb: float | None = None) -> int:
    from analysis.repair import set_aside_garbled_tables
    from analysis.tables import scan_tables

    errors = _query_option_errors(fmt=fmt, output=output, limit=limit, max_memory_gb=max_memory_gb)
    if errors:
        raise SpecError(errors, "query")
    max_bytes = int(max_memory_gb * 2**30) if max_memory_gb else default_max_memory_bytes()
    store = sweep.store
    for line in set_aside_garbled_tables(store):  # a garbled file would stop every scan of its table
        print(f"impsweep: {line}", file=sys.stderr, flush=True)
    outcome = run_query(scan_tables(store), sql, limit=limit, max_memory_bytes=max_bytes)
    result = outcome.frame
    try:
        if fmt == "parquet":
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
    except OSError as err:  # checked before the query ran; the file system can still refuse
        raise SpecError([f"--output: cannot write {str(output)!r} ({err.strerror})"], "query") from None
    if outcome.truncated:
        print(f"impsweep: first {limit} rows; pass --limit to see more", file=sys.stderr, flush=True)
    return 0


def _query_option_errors(*, fmt: str, output: Path | None, limit: int, max_memory_gb: float | None) -> list[str]:
    errors = []
    if limit < 1:
        errors.append(f"--limit: expected a positive number of rows (got {limit})")
    if max_memory_gb is not None and not (math.isfinite(max_memory_gb) and max_memory_gb > 0):
        errors.append(f"--max-memory-gb: expected a positive number of GB (got {max_memory_gb})")
    if fmt == "parquet" and output is None:
        errors.append("--format parquet needs --output FILE")
    if output is not None and fmt != "table":
        if output.is_dir():
            errors.append(f"--output: {str(output)!r} is a folder; expected a file to write")
        elif not output.absolute().parent.is_dir():
            errors.append(f"--output: the folder of {str(output)!r} does not exist")
    return errors


def ui(sweep: SweepSpec, *, host: str = "127.0.0.1", port: int = 5000) -> int:
    _, experiment_id = prepare_tracking(sweep)
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow, "ui", "--backend-store-uri", sweep.resolved_tracking_uri, "--host", host, "--port", str(port)]
    if not sweep.resolved_tracking_uri.startswith(("http://", "https://")):  # a server keeps its own
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
