"""Orchestration overhead: lineages that only sleep, run through Ray Tune and MLflow exactly as
real lineages are (one trial each, a child run, metrics and an artifact per level, a report per
level), so that every second not spent sleeping is the orchestrator's.

    python benchmarks/orchestration_bench.py                  # 1, 5, 20, 60 s lineages, 2 at a time
    python benchmarks/orchestration_bench.py --count          # only: 1,000 lineages of 0.1 s, driver memory
    python benchmarks/orchestration_bench.py --count 200 --count-chunks 200 50
    python benchmarks/orchestration_bench.py --quick          # a minute-long smoke run

The count mode runs N lineages of 0.1 s x 5 levels once per chunk size (by default one
experiment of N trials, then experiments of 250) and traces the driver's resident memory against
the lineages finished, to show whether it grows with the trial count and whether chunking
bounds it. Writes benchmarks/results/orchestration-cpu.json (keeping the results of the cases
not rerun) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

LEVELS = 5


def sleep_trainable(config: dict, *, work_s: float) -> None:
    """A lineage whose levels only sleep: `work_s` seconds over LEVELS levels, recorded in
    MLflow and reported to Tune like a real lineage."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    from trainables.ids import checkpoint_id, lineage_id
    from trainables.lineage_run import LevelResult
    from trainables.tracking import find_level_runs, lineage_tags, log_level, set_lineage_status
    from trainables.trials import LineageTrial

    trial = LineageTrial.from_config(config)
    spec, ref = trial.spec, trial.tracking
    client = MlflowClient(ref.tracking_uri)
    lid = lineage_id(spec)
    set_lineage_status(client, ref.parent_run_id, status="RUNNING")
    known = find_level_runs(client, lid, experiment_ids=[ref.experiment_id])
    mlflow_s = 0.0
    for level in range(LEVELS):
        time.sleep(work_s / LEVELS)
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "state.txt").write_text("x" * 1024)
            result = LevelResult(lid, level, checkpoint_id(lid, level), Path(tmp),
                                 {"sparsity": 0.0, "sparsity_all": 0.0, "test_acc": 0.0, "test_loss": 0.0,
                                  "train_loss": 0.0, "epochs": 1.0, "wall_s": work_s / LEVELS}, (), False)
            t0 = time.perf_counter()
            log_level(client, result, ref=ref, tags=lineage_tags(spec, ref.code_rev), known=known)
            mlflow_s += time.perf_counter() - t0
        tune.report({"level": level, "n_levels": LEVELS, "lineage_id": lid, "resumed": False,
                     "sparsity": 0.0, "test_acc": 0.0, "wall_s": work_s / LEVELS, "mlflow_s": mlflow_s})
    set_lineage_status(client, ref.parent_run_id, status="FINISHED")


class MemoryTrace:
    """Samples this process's resident memory (and its Ray GCS server's) every `interval_s`;
    keeps the peak, and a row (elapsed_s, lineages_done, rss_mb, gcs_rss_mb, load_1m) every
    `row_s` seconds. `done` is read from the sampling thread: a callable returning a count."""

    def __init__(self, done=lambda: 0, interval_s: float = 0.2, row_s: float = 1.0):
        self.done, self.interval_s, self.row_s = done, interval_s, row_s
        self.peak, self.gcs_peak, self.rows = 0, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        proc = psutil.Process()
        gcs = [p for p in proc.children(recursive=True) if p.name().startswith("gcs_server")][:1]
        start = last_row = time.perf_counter()
        while not self._stop.is_set():
            rss = proc.memory_info().rss
            gcs_rss = _rss(gcs[0]) if gcs else 0
            self.peak, self.gcs_peak = max(self.peak, rss), max(self.gcs_peak, gcs_rss)
            now = time.perf_counter()
            if now - last_row >= self.row_s or not self.rows:
                self.rows.append((round(now - start, 1), self.done(), round(rss / 2**20, 1),
                                  round(gcs_rss / 2**20, 1), round(os.getloadavg()[0], 2)))
                last_row = now
            time.sleep(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


class FinishedCounter:
    """An echo that counts the lineages the progress lines report finished or failed."""

    def __init__(self):
        self.count = 0

    def __call__(self, line: str) -> None:
        if line.endswith(" finished") or " FAILED: " in line:
            self.count += 1


def run_case(root: Path, work_s: float, n: int, concurrent: int, chunk_size: int, cpu: float,
             trace: bool = False) -> dict:
    from orchestrator import experiments, launch, load_sweep
    from orchestrator.plan import plan_sweep
    from trainables.tracking import ensure_parent_runs, search_all

    name = f"sleep-{str(work_s).replace('.', 'p')}-{n}-chunk{chunk_size}"
    sweep = load_sweep({
        "name": name, "workdir": str(root / name), "resources": {"cpu": cpu},
        "max_concurrent": concurrent, "chunk_size": chunk_size, "max_failures": 0,
        # Distinct lineages (seeds); their specs are never trained, only their ids are used.
        "grid": {"seed": list(range(n))}, "model": "lenet_300_100", "dataset": "digits",
        "prune": {"levels": LEVELS - 1},
    })
    setup_start = time.perf_counter()
    client, experiment_id = launch.prepare_tracking(sweep)
    rev = experiments.code_rev()
    plans = plan_sweep(sweep, client)
    # As run_sweep does: every parent run exists before the first trial starts.
    parents = ensure_parent_runs(client, [p.spec for p in plans], experiment_id=experiment_id, sweep=sweep.name,
                                 code_rev=rev)
    setup_s = time.perf_counter() - setup_start
    finished = FinishedCounter()
    load_before = os.getloadavg()
    start = time.perf_counter()
    with MemoryTrace(lambda: finished.count) as rss:
        failed = launch.run_grid(sweep, plans, parents=parents, experiment_id=experiment_id, rev=rev, echo=finished,
                                 trainable=_with_work(work_s))
    wall = time.perf_counter() - start
    ideal = work_s * n / concurrent
    runs = search_all(client, "", experiment_ids=[experiment_id])
    writes = n * LEVELS * 5  # per level: create run, metrics, artifact, parent metrics, terminate
    result = {
        "work_s": work_s, "lineages": n, "levels": LEVELS, "concurrent": concurrent, "chunk_size": chunk_size,
        "wall_s": round(wall, 2), "ideal_s": round(ideal, 2),
        "overhead_fraction": round(1 - ideal / wall, 4),
        "overhead_per_lineage_s": round((wall * concurrent - work_s * n) / n, 3),
        "mlflow_runs": len(runs), "mlflow_writes_per_s": round(writes / wall, 1),
        "driver_peak_rss_mb": round(rss.peak / 2**20, 1), "failed": list(failed),
    }
    if trace:
        rows = rss.rows
        marks = _rss_by_done(rows, n)
        result.update({
            "lineages_per_s": round(n / wall, 2), "setup_s": round(setup_s, 1),
            "experiments": -(-n // chunk_size), "gcs_peak_rss_mb": round(rss.gcs_peak / 2**20, 1),
            "load_avg_1m": {"before": round(load_before[0], 2), "max": max(r[4] for r in rows),
                            "mean": round(sum(r[4] for r in rows) / len(rows), 2)},
            "rss_by_lineages_done": marks,
            # From the first tenth to the end: how the driver grows with the trials it has seen.
            "rss_growth_mb_per_100_lineages": _growth(marks),
            # At most ~120 rows of the 1 s trace: enough to draw the curve.
            "trace_columns": ["elapsed_s", "lineages_done", "rss_mb", "gcs_rss_mb", "load_1m"],
            "trace": _thin(rows, 120),
        })
    return result


def _thin(rows: list[tuple], most: int) -> list[tuple]:
    """About `most` evenly spaced rows, the last one included."""
    kept = rows[:: max(1, -(-len(rows) // most))]
    return kept if kept[-1] == rows[-1] else kept + [rows[-1]]


def _growth(marks: list[dict]) -> float | None:
    if len(marks) < 2 or marks[-1]["lineages_done"] == marks[0]["lineages_done"]:
        return None
    first, last = marks[0], marks[-1]
    return round((last["rss_mb"] - first["rss_mb"]) * 100 / (last["lineages_done"] - first["lineages_done"]), 2)


def _rss_by_done(rows: list[tuple], n: int) -> list[dict]:
    """The driver's resident memory when each tenth of the lineages had finished (the first row
    at or past each mark)."""
    marks = []
    for tenth in range(1, 11):
        target = n * tenth // 10
        row = next((r for r in rows if r[1] >= target), None)
        if row is not None and not (marks and marks[-1]["lineages_done"] == row[1]):
            marks.append({"lineages_done": row[1], "elapsed_s": row[0], "rss_mb": row[2], "gcs_rss_mb": row[3]})
    return marks


def _with_work(work_s: float):
    def trainable(config: dict) -> None:
        sleep_trainable(config, work_s=work_s)

    return trainable


def _count_variant(args) -> None:
    """One count run (chunk size `args.variant`) in this process; its result goes to args.out."""
    import ray

    from orchestrator.experiments import ensure_ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ensure_ray(num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_case(Path(tmp), 0.1, args.count, args.count_concurrent, args.variant,
                          2 / args.count_concurrent, trace=True)
    ray.shutdown()
    args.out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=float, nargs="*", default=[1, 5, 20, 60], help="seconds of work per lineage")
    parser.add_argument("--lineages", type=int, default=4, help="lineages per work size")
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--count", type=int, nargs="?", const=1000, default=None,
                        help="count mode only: this many 0.1 s lineages (default 1,000), driver memory traced")
    parser.add_argument("--count-chunks", type=int, nargs="*", default=None,
                        help="chunk sizes the count mode compares (default: the count itself, then 250)")
    parser.add_argument("--count-concurrent", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--variant", type=int, default=None, help=argparse.SUPPRESS)  # one count run, in this process
    parser.add_argument("--quick", action="store_true", help="one 1 s case and 20 short lineages")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/orchestration-cpu.json (--quick: a temporary file)")
    args = parser.parse_args()
    if args.quick:
        args.work, args.lineages, args.count, args.count_chunks = [1], 2, 20, [20, 10]
        args.out = args.out or Path(tempfile.gettempdir()) / "orchestration-quick.json"
    elif args.count is not None:
        args.work = []  # the count mode alone: the timed cases keep their stored results
    args.out = args.out or Path(__file__).parent / "results" / "orchestration-cpu.json"
    chunks = args.count_chunks or ([args.count, 250] if args.count else [])
    if args.variant is not None:
        return _count_variant(args)
    cases, counts = [], []
    if args.work:
        import ray

        from orchestrator.experiments import ensure_ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ensure_ray(num_cpus=2)
        with tempfile.TemporaryDirectory() as tmp:
            for work in args.work:
                cases.append(run_case(Path(tmp), work, args.lineages, args.concurrent, args.chunk_size, 1.0))
                print(json.dumps(cases[-1]), flush=True)
        ray.shutdown()
    for chunk_size in chunks if args.count else []:
        # A fresh driver per variant: memory a process has held it keeps, so a second variant
        # in the same process would start from the first one's peak.
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "variant.json"
            subprocess.run([sys.executable, __file__, "--count", str(args.count), "--variant", str(chunk_size),
                            "--count-concurrent", str(args.count_concurrent), "--out", str(out)], check=True)
            counts.append(json.loads(out.read_text()))
        print(json.dumps({k: v for k, v in counts[-1].items() if k != "trace"}), flush=True)
    import mlflow
    import ray as ray_module

    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # Each part says when it was measured: a count run keeps the timed cases of an earlier one.
    result["cases_date"] = now if cases else result.get("cases_date", result.get("date"))
    if counts:
        result["count_cases_date"] = now
    result.update({
        "date": now, "device": "cpu",
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "versions": {"ray": ray_module.__version__, "mlflow": mlflow.__version__, "python": platform.python_version()},
        "tracking": "sqlite (embedded default)",
    })
    if cases:
        result["cases"] = cases
    if counts:
        result["count_cases"] = counts
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Lists of numbers on one line each (trace rows): the file stays readable.
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]",
                  json.dumps(result, indent=2))
    args.out.write_text(text + "\n")
    print(f"\n{'work_s':>7} {'lineages':>8} {'conc':>4} {'chunk':>5} {'wall_s':>8} {'ideal_s':>8} {'overhead':>9} "
          f"{'per-lineage s':>13} {'driver MB':>9}")
    for c in cases + counts:
        print(f"{c['work_s']:>7} {c['lineages']:>8} {c['concurrent']:>4} {c['chunk_size']:>5} {c['wall_s']:>8} "
              f"{c['ideal_s']:>8} {c['overhead_fraction']:>9.1%} {c['overhead_per_lineage_s']:>13} "
              f"{c['driver_peak_rss_mb']:>9}")
    for c in counts:
        curve = ", ".join(f"{m['lineages_done']}: {m['rss_mb']:.0f}" for m in c["rss_by_lineages_done"])
        print(f"chunk {c['chunk_size']}: {c['lineages_per_s']} lineages/s; driver MB by lineages done: {curve}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
