"""The `impsweep` command line: run, status, analyze, report, query, ui, demo.

Exit codes: 0 ok, 2 bad input (nothing started, nothing written), 1 failure, 130 interrupted
(Ctrl-C; run, analyze and demo resume where they stopped when run again).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from sqlalchemy.exc import DatabaseError

from orchestrator.interrupts import EXIT_INTERRUPTED
from orchestrator.query import DEFAULT_LIMIT
from orchestrator.cluster_check import check_cluster_storage
from orchestrator.specs import SpecError, SweepSpec, load_sweep
from orchestrator.workdir import check_workdir
from trainables import layout
from trainables.storage import is_object_store

DEMO_SWEEP = "demo.yaml"
RESUMABLE = ("run", "analyze", "demo")  # verbs that finish what an interrupted one left

DEMO_QUERY = """
SELECT s.a_layer AS layer, s.b_level AS level, ROUND(AVG(l.sparsity), 3) AS sparsity,
       s.measure, ROUND(AVG(s.value), 4) AS mean_similarity, COUNT(*) AS n_seeds
FROM similarity s JOIN levels l ON l.checkpoint_id = s.b_checkpoint_id
WHERE s.a_lineage_id = s.b_lineage_id AND s.a_level = 0
GROUP BY s.a_layer, s.b_level, s.measure
ORDER BY s.measure, s.a_layer, s.b_level
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="impsweep", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def with_sweep(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("sweep", help="sweep YAML file")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field before validation (dotted key, YAML value); repeatable")
        p.add_argument("--smoke", action="store_true", help="apply the file's `smoke:` overrides")
        return p

    with_sweep("run", "run every lineage of the sweep that is not done yet")
    with_sweep("status", "print per lineage: done / partial / to do")
    with_sweep("analyze", "compute the sweep's similarity tables")
    with_sweep("report", "write the sweep's HTML report with figures (and log them to MLflow)")
    query = with_sweep("query", "run polars SQL over the tables (similarity, levels, layers, lineages, sweep_lineages)")
    query.add_argument("sql", help='SQL, e.g. "SELECT * FROM levels LIMIT 5"')
    query.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    query.add_argument("--output", type=Path, help="file to write (required for parquet)")
    query.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                       help=f"rows shown or written at most (default: {DEFAULT_LIMIT})")
    query.add_argument("--max-memory-gb", type=float, default=None,
                       help="stop the query past this much memory (default: half of this machine's)")
    ui = with_sweep("ui", "serve the MLflow UI of the sweep's tracking store on 127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    demo = sub.add_parser("demo", help="run the built-in demo sweep end to end and print a query")
    demo.add_argument("--workdir", default="runs/demo", help="where the demo writes (default: runs/demo)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        code = _dispatch(args)
    except SpecError as err:
        print(f"impsweep: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a Tune experiment
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        again = f"; run `{shlex.join(['impsweep', *argv])}` again to resume" if args.verb in RESUMABLE else ""
        print(f"impsweep: interrupted{again}", file=sys.stderr, flush=True)
    return code


def demo_sweep_text() -> str:
    return resources.files("orchestrator").joinpath(DEMO_SWEEP).read_text()


def _load(args) -> SweepSpec:
    if args.verb == "demo":
        import yaml

        raw = yaml.safe_load(demo_sweep_text())
        raw["workdir"] = args.workdir
        return load_sweep(raw, overrides=args.overrides)
    return load_sweep(args.sweep, overrides=args.overrides, smoke=args.smoke)


def _in_ray_job_working_dir() -> bool:
    """True when this process is a `ray job submit --working-dir` entrypoint."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return False
    try:
        return bool(json.loads(raw).get("runtime_env", {}).get("working_dir"))
    except (ValueError, AttributeError):
        return False


def leave_job_working_dir(sweep: SweepSpec) -> None:
    """Ray replaces a job's working_dir on a node whenever a new worker with it starts there,
    deleting the directory the driver stands in (ray-project/ray#52343: Tune then fails at the
    end of the sweep). So a job's driver works from the sweep's workdir, which must therefore
    be absolute: a relative one would live inside the replaced directory."""
    if not _in_ray_job_working_dir():
        return
    if is_object_store(sweep.workdir):  # nothing to stand in: a node-local scratch folder will do
        os.chdir(tempfile.mkdtemp(prefix="impsweep-job-"))
        return
    if not Path(sweep.workdir).is_absolute():
        raise SpecError([
            f"workdir: {sweep.workdir!r} is relative, but this runs as a Ray job whose working directory "
            "Ray replaces while it runs; give an absolute path on shared storage, e.g. "
            "--set workdir=/home/ubuntu/impsweep-runs/" + sweep.name
        ], "sweep")
    Path(sweep.workdir).mkdir(parents=True, exist_ok=True)
    os.chdir(sweep.workdir)


def _dispatch(args) -> int:
    sweep = _load(args)
    if args.verb in ("run", "analyze", "report", "ui", "demo"):  # the verbs that write to the workdir
        check_workdir(sweep.workdir)
    if args.verb in ("run", "analyze", "demo"):
        check_cluster_storage(sweep, echo=lambda line: print(line, flush=True))  # before the workdir is made
        leave_job_working_dir(sweep)
    try:
        return _verb(args, sweep)
    except DatabaseError as err:  # SQLAlchemy's, from the MLflow store
        raise SpecError([_unreadable_store(sweep, err)], "tracking_uri") from None


def _unreadable_store(sweep: SweepSpec, err: DatabaseError) -> str:
    uri = sweep.resolved_tracking_uri
    reason = str(getattr(err, "orig", None) or err).splitlines()[0]
    if sweep.tracking_uri:
        return f"tracking_uri: the MLflow store {uri} cannot be read ({reason}); check or restore it"
    return (f"tracking_uri: the sweep's MLflow store {sweep.store.uri(layout.MLFLOW_DB)} cannot be read ({reason}). "
            f"Restore it from a backup, or move it aside (e.g. to mlflow.db.corrupt): the checkpoints under "
            f"{sweep.store.uri(layout.LINEAGES)} are kept, and the next `impsweep run` records their levels again "
            "without training them")


def _verb(args, sweep: SweepSpec) -> int:
    from orchestrator import commands

    if args.verb == "run":
        return commands.run(sweep)
    if args.verb == "status":
        return commands.status(sweep)
    if args.verb == "analyze":
        return commands.analyze(sweep)
    if args.verb == "report":
        return commands.report(sweep)
    if args.verb == "query":
        return commands.query(sweep, args.sql, fmt=args.format, output=args.output, limit=args.limit,
                              max_memory_gb=args.max_memory_gb)
    if args.verb == "ui":
        return commands.ui(sweep, host=args.host, port=args.port)
    if args.verb == "demo":
        return commands.demo(sweep, DEMO_QUERY)
    raise AssertionError(f"unhandled verb {args.verb}")  # argparse rejects unknown verbs first


if __name__ == "__main__":
    sys.exit(main())
