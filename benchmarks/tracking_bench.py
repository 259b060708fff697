"""Tracking benchmark: what reading the MLflow record costs the driver at 1,000 to 10,000
lineages of 20 levels, and what creating parent runs costs per run.

A grid sweep over seeds (`lenet_300_100` on digits, 20 levels) is recorded synthetically in an
`mlflow server` on 127.0.0.1 with a SQLite backend: per lineage a FINISHED parent run and 20
FINISHED level runs, with the tags, params and metrics real runs carry (`lineage_tags`,
`parent_params`, `LEVEL_METRICS`; the parent's metric history by level). The database is filled
with SQL inserts into MLflow's own schema (created by MLflow on an empty database), not through
the REST API, and kept in the git-ignored `benchmarks/.cache/` under a key of size, fill
version and MLflow version, so that reruns skip the fill.

Then, each in a fresh subprocess (so that every measurement starts from the same baseline):
`plan_sweep` (the workdir holds no level folders, so every lineage plans as to do; the MLflow
part is all there is to time) and `build_catalog` (a minimal workdir: each lineage's spec.json;
its tables are written). Memory is the peak RSS above the subprocess's RSS after imports
(`resource.getrusage` high-water mark minus the RSS read from /proc before the call). "before"
runs the same measurements against the code of `--before` (a git revision, exported with
`git archive`), "after" against this tree.

Parent-run creation (`ensure_parent_runs` of new lineages) is timed per run on an embedded
SQLite store and on a server, before and after.

Writes benchmarks/results/tracking-cpu.json and prints a table.

    python benchmarks/tracking_bench.py [--sizes 1000,5000,10000] [--before REV] [--before-sizes 1000] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
LEVELS = 20  # dense level 0 and 19 pruned levels
FILL_VERSION = 2  # 2: with the level index; bump when the synthetic record changes, so that cached databases are refilled
BEFORE = "e3d2d1f"  # the last revision that read every run of every experiment


def sweep_spec(n: int, *, workdir: str, tracking_uri: str | None = None):
    from orchestrator import load_sweep

    return load_sweep({
        "name": f"track-{n}", "workdir": workdir, "tracking_uri": tracking_uri,
        "grid": {"seed": list(range(n))}, "model": "lenet_300_100", "dataset": "digits",
        "prune": {"levels": LEVELS - 1},
    })


def _uuid(*parts: object) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def fill(db: Path, n: int) -> None:
    """A SQLite MLflow database holding the synthetic record of `n` lineages."""
    from mlflow.tracking import MlflowClient

    from trainables.ids import checkpoint_id, lineage_id
    from trainables.tracking import LEVEL_METRICS, TAG, KIND_LEVEL, lineage_tags, parent_params, sweep_tag

    sweep = sweep_spec(n, workdir=str(db.parent / "workdir"))
    artifacts = str(db.parent / "artifacts")
    client = MlflowClient(f"sqlite:///{db}")  # MLflow creates and migrates its schema
    experiment = int(client.create_experiment(sweep.name, artifact_location=artifacts))
    runs, tags, params, metrics, latest = [], [], [], [], []
    t0 = 1_700_000_000_000
    for i, spec in enumerate(sweep.lineages):
        lid = lineage_id(spec)
        parent, start = _uuid(lid, "parent"), t0 + i * (LEVELS + 1) * 1000
        base = lineage_tags(spec, "bench")
        runs.append((parent, lid, start, start + LEVELS * 1000, experiment))
        tags += [(k, v, parent) for k, v in {**base, sweep_tag(sweep.name): "1", "mlflow.runName": lid}.items()]
        params += [(p.key, p.value, parent) for p in parent_params(spec)]
        level_tags = {k: v for k, v in base.items() if k != f"{TAG}kind"}
        for level in range(LEVELS):
            run, cid, at = _uuid(lid, level), checkpoint_id(lid, level), start + (level + 1) * 1000
            values = _metrics(i, level)
            runs.append((run, cid, at, at + 900, experiment))
            tags += [(k, v, run) for k, v in {
                **level_tags, f"{TAG}kind": KIND_LEVEL, f"{TAG}level": str(level), f"{TAG}checkpoint_id": cid,
                "mlflow.parentRunId": parent, "mlflow.runName": cid}.items()]
            for key in LEVEL_METRICS:
                metrics += [(key, values[key], at + 900, run, 0), (key, values[key], at + 900, parent, level)]
                latest.append((key, values[key], at + 900, 0, run))
                if level == LEVELS - 1:
                    latest.append((key, values[key], at + 900, level, parent))
    with sqlite3.connect(db) as con:
        con.executemany("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, "
                        "status, start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
                        f"VALUES (?, ?, 'UNKNOWN', '', '', 'bench', 'FINISHED', ?, ?, '', 'active', "
                        f"'{artifacts}/' || ? || '/artifacts', ?)",
                        [(r, name, s, e, r, x) for r, name, s, e, x in runs])
        con.executemany('INSERT INTO tags ("key", value, run_uuid) VALUES (?, ?, ?)', tags)
        con.executemany('INSERT INTO params ("key", value, run_uuid) VALUES (?, ?, ?)', params)
        con.executemany('INSERT INTO metrics ("key", value, timestamp, run_uuid, step, is_nan) '
                        'VALUES (?, ?, ?, ?, ?, 0)', metrics)
        con.executemany('INSERT INTO latest_metrics ("key", value, timestamp, step, is_nan, run_uuid) '
                        'VALUES (?, ?, ?, ?, 0, ?)', latest)


def add_level_index(db: Path, n: int) -> None:
    """The experiment's level index (`trainables.level_index`) as trials write it: an entry per
    lineage with its levels' run ids and metrics, and the tag saying the index is complete."""
    from trainables.ids import lineage_id
    from trainables.level_index import COMPLETE_TAG, IndexedLevel, entry_key, entry_value

    sweep = sweep_spec(n, workdir=str(db.parent / "workdir"))
    rows = [(COMPLETE_TAG, "1")]
    for i, spec in enumerate(sweep.lineages):
        lid = lineage_id(spec)
        levels = {level: IndexedLevel(_uuid(lid, level), _metrics(i, level)) for level in range(LEVELS)}
        rows.append((entry_key(lid), entry_value(levels)))
    with sqlite3.connect(db) as con:
        (experiment,) = con.execute("SELECT experiment_id FROM experiments WHERE name = ?", (sweep.name,)).fetchone()
        con.executemany('INSERT INTO experiment_tags ("key", value, experiment_id) VALUES (?, ?, ?)',
                        [(k, v, experiment) for k, v in rows])


def _metrics(i: int, level: int) -> dict[str, float]:
    sparsity = 1 - 0.8**level
    acc = 0.97 - 0.002 * level + 0.0001 * (i % 7)
    return {"sparsity": sparsity, "sparsity_all": sparsity * 0.99, "test_acc": acc, "test_loss": 1 - acc,
            "train_loss": 0.9 - acc, "epochs": 2.0, "wall_s": 10.0 + (i % 5)}


def cached_db(n: int) -> Path:
    """The filled database for `n` lineages, filled once per key."""
    import mlflow

    from trainables.ids import lineage_id

    first = lineage_id(sweep_spec(1, workdir="/unused").lineages[0])
    key = f"n{n}-levels{LEVELS}-fill{{}}-mlflow{mlflow.__version__}-{first}"
    db = CACHE / key.format(FILL_VERSION) / "mlflow.db"
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        partial = db.with_name("filling.db")
        partial.unlink(missing_ok=True)
        t0 = time.perf_counter()
        runs_only = CACHE / key.format(1) / "mlflow.db"  # fill 1: the same runs, without the index
        if runs_only.exists():
            runs_only.rename(partial)
            runs_only.parent.rmdir()
        else:
            fill(partial, n)
        add_level_index(partial, n)
        partial.rename(db)
        print(f"filled {db.parent.name} in {time.perf_counter() - t0:.0f}s", flush=True)
    return db


def write_workdir(workdir: Path, n: int) -> None:
    """Each lineage's spec.json: all the catalog reads from a workdir without level folders."""
    from trainables.checkpoints import LineageCheckpoints
    from trainables.ids import lineage_id

    for spec in sweep_spec(n, workdir=str(workdir)).lineages:
        LineageCheckpoints(workdir, lineage_id(spec)).ensure_spec(spec)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(what: str, n: int, uri: str, workdir: str) -> dict:
    """One measurement in this (fresh) process: wall seconds and peak RSS above the baseline."""
    from analysis.catalog import build_catalog
    from orchestrator.plan import plan_sweep

    if what == "parents":
        return create_parents(n, uri, workdir)
    sweep = sweep_spec(n, workdir=workdir, tracking_uri=uri)
    specs = sweep.lineages  # expanded before the baseline: the grid is no part of what is measured
    baseline = rss_bytes()
    t0 = time.perf_counter()
    if what == "plan":
        plans = plan_sweep(sweep)
        digest = hashlib.sha256(json.dumps([(p.lineage_id, p.state, p.levels_done) for p in plans]).encode())
        count = len(plans)
    else:
        frame = build_catalog(sweep.name, tracking_uri=uri, workdir=workdir)
        digest = hashlib.sha256(frame.drop("checkpoint_path").write_csv().encode())
        count = frame.height
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"wall_s": round(wall, 2), "peak_above_baseline_mb": round((peak - baseline) / 2**20, 1),
            "baseline_mb": round(baseline / 2**20, 1), "rows": count, "digest": digest.hexdigest()[:16],
            "lineages": len(specs)}


def measure(what: str, n: int, uri: str, workdir: Path, code: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run([sys.executable, __file__, "--child", what, "--n", str(n), "--uri", uri,
                          "--workdir", str(workdir), "--code", str(code)],
                         env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode:
        raise RuntimeError(f"{what} at {n} ({code}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000", help="lineage counts, comma-separated")
    parser.add_argument("--before", default=BEFORE, help="git revision measured as 'before' (empty: none)")
    parser.add_argument("--before-sizes", default="1000", help="sizes at which 'before' is measured")
    parser.add_argument("--quick", action="store_true", help="1,000 lineages only (a smoke run)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/tracking-cpu.json)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--uri", default="", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--code", default=str(ROOT), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, args.code)
        print(json.dumps(child(args.child, args.n, args.uri, args.workdir)))
        return
    sys.path.insert(0, str(ROOT))
    run_bench(args)


def run_bench(args: argparse.Namespace) -> None:
    from benchmarks._timing import Session, code_rev, write_results
    from orchestrator.mlflow_server import MlflowServer
    import torch

    session = Session()
    sizes = [1000] if args.quick else [int(s) for s in args.sizes.split(",")]
    before_sizes = {int(s) for s in args.before_sizes.split(",")} if args.before else set()
    results = {"benchmark": "tracking", "levels": LEVELS, "code_rev": code_rev(ROOT), "before_rev": args.before,
               "memory": "peak RSS (getrusage ru_maxrss) above the RSS after imports, in a fresh subprocess",
               "catalog": "build_catalog in full, workdir with each lineage's spec.json and no level folders",
               "server": "mlflow server on 127.0.0.1, SQLite backend, 1 worker", "sizes": {}}
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "tracking-cpu.json"
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"after": ROOT}
        if args.before:
            old = Path(tmp) / "before"
            old.mkdir()
            subprocess.run(f"git -C {ROOT} archive {args.before} | tar -x -C {old}", shell=True, check=True)
            codes["before"] = old
        results["parent_creation"] = parent_creation(Path(tmp), codes)
        for n in sizes:
            db = cached_db(n)
            workdir = Path(tmp) / f"workdir-{n}"
            write_workdir(workdir, n)
            row = {}
            with MlflowServer(f"sqlite:///{db}", db.parent / "artifacts", log_path=Path(tmp) / f"server-{n}.log") as server:
                for version, code in codes.items():
                    if version == "before" and n not in before_sizes:
                        continue
                    for what in ("plan", "catalog"):
                        row[f"{what}_{version}"] = m = measure(what, n, server.uri, workdir, code)
                        print(f"{n} lineages, {what} {version}: {m['wall_s']:.1f} s, "
                              f"+{m['peak_above_baseline_mb']:.0f} MB ({m['rows']} rows, {m['digest']})", flush=True)
            results["sizes"][str(n)] = row
            out = write_results({**results, **session.facts(torch.device("cpu"))}, path)  # each size as it ends
    print(f"wrote {out}")


def parent_creation(tmp: Path, codes: dict[str, Path], n: int = 200) -> dict:
    """Seconds per parent run that `ensure_parent_runs` creates for `n` new lineages, on an
    embedded SQLite store and on a server, with the code of each version."""
    from orchestrator.mlflow_server import MlflowServer

    out = {}
    with MlflowServer(f"sqlite:///{tmp / 'parents-server.db'}", tmp / "parents-artifacts") as server:
        for version, code in codes.items():
            for store, uri in (("sqlite", f"sqlite:///{tmp / f'parents-{version}.db'}"), ("server", server.uri)):
                m = measure("parents", n, uri, tmp / f"parents-{version}-{store}", code)
                out[f"{store}_{version}_s_per_run"] = m["s_per_run"]
                print(f"parent runs, {store}, {version}: {m['s_per_run'] * 1e3:.1f} ms each", flush=True)
    return {"lineages": n, **out}


def create_parents(n: int, uri: str, workdir: str) -> dict:
    """Time `ensure_parent_runs` for `n` lineages none of which has a parent run yet."""
    from mlflow.tracking import MlflowClient

    from trainables.tracking import ensure_experiment, ensure_parent_runs

    sweep = sweep_spec(n, workdir=workdir, tracking_uri=uri)
    client = MlflowClient(uri)
    experiment = ensure_experiment(client, Path(workdir).name)  # a fresh experiment per measurement
    client.search_runs([experiment], max_results=1)  # the store created before timing
    offset = int(hashlib.md5(workdir.encode()).hexdigest()[:6], 16) * 1000  # lineages new to the store
    specs = [spec.model_copy(update={"seed": spec.seed + offset}) for spec in sweep.lineages]
    t0 = time.perf_counter()
    ensure_parent_runs(client, specs, experiment_id=experiment, sweep=Path(workdir).name,
                       code_rev="bench")
    return {"s_per_run": round((time.perf_counter() - t0) / n, 4)}


if __name__ == "__main__":
    main()
