"""Orchestration overhead: lineages that only sleep, run through Ray Tune and MLflow exactly as
real lineages are (one trial each, a child run, metrics and an artifact per level, a report per
level), so that every second not spent sleeping is the orchestrator's.

    python benchmarks/orchestration_bench.py                  # 1, 5, 20, 60 s lineages, 2 at a time
    python benchmarks/orchestration_bench.py --count 1000     # + 1,000 lineages of 0.1 s, driver memory
    python benchmarks/orchestration_bench.py --quick          # a minute-long smoke run

Writes benchmarks/results/orchestration-cpu.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

LEVELS = 5


def sleep_trainable(config: dict) -> None:
    """A lineage whose levels only sleep: `work_s` seconds over LEVELS levels, recorded in
    MLflow and reported to Tune like a real lineage."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    from trainables.ids import checkpoint_id, lineage_id
    from trainables.lineage import LevelResult
    from trainables.specs import LineageSpec
    from trainables.tracking import TrackingRef, find_level_runs, lineage_tags, log_level, set_lineage_status

    lineage = config["lineage"]
    spec = LineageSpec.model_validate(lineage["spec"])
    work_s = lineage["work_s"]
    ref = TrackingRef(**lineage["tracking"])
    client = MlflowClient(ref.tracking_uri)
    lid = lineage_id(spec)
    set_lineage_status(client, ref.parent_run_id, "RUNNING")
    known = find_level_runs(client, lid, [ref.experiment_id])
    mlflow_s = 0.0
    for level in range(LEVELS):
        time.sleep(work_s / LEVELS)
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "state.txt").write_text("x" * 1024)
            result = LevelResult(lid, level, checkpoint_id(lid, level), Path(tmp),
                                 {"sparsity": 0.0, "sparsity_all": 0.0, "test_acc": 0.0, "test_loss": 0.0,
                                  "train_loss": 0.0, "epochs": 1.0, "wall_s": work_s / LEVELS}, (), False)
            t0 = time.perf_counter()
            log_level(client, ref, result, tags=lineage_tags(spec, ref.code_rev), known=known)
            mlflow_s += time.perf_counter() - t0
        tune.report({"level": level, "n_levels": LEVELS, "lineage_id": lid, "resumed": False,
                     "sparsity": 0.0, "test_acc": 0.0, "wall_s": work_s / LEVELS, "mlflow_s": mlflow_s})
    set_lineage_status(client, ref.parent_run_id, "FINISHED")


class PeakRss:
    """Samples this process's resident memory every 0.2 s."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_case(root: Path, work_s: float, n: int, concurrent: int, chunk_size: int, cpu: float) -> dict:
    from orchestrator import launch, load_sweep
    from orchestrator.plan import plan_sweep
    from trainables.tracking import ensure_parent_run

    name = f"sleep-{str(work_s).replace('.', 'p')}-{n}"
    sweep = load_sweep({
        "name": name, "workdir": str(root / name), "resources": {"cpu": cpu},
        "max_concurrent": concurrent, "chunk_size": chunk_size, "max_failures": 0,
        # Distinct lineages (seeds); their specs are never trained, only their ids are used.
        "grid": {"seed": list(range(n))}, "model": "lenet_300_100", "dataset": "digits",
        "prune": {"levels": LEVELS - 1},
    })
    client, experiment_id = launch.prepare_tracking(sweep)
    rev = launch.code_rev()
    plans = plan_sweep(sweep, client)
    parents = {p.lineage_id: ensure_parent_run(client, experiment_id, p.spec, sweep=sweep.name, code_rev=rev)
               for p in plans}
    lines: list[str] = []
    start = time.perf_counter()
    with PeakRss() as rss:
        failed = launch._grid(sweep, plans, parents, experiment_id, rev, lines.append,
                              trainable=_with_work(work_s))
    wall = time.perf_counter() - start
    ideal = work_s * n / concurrent
    runs = client.search_runs([experiment_id], max_results=5000)
    writes = n * LEVELS * 5  # per level: create run, metrics, artifact, parent metrics, terminate
    return {
        "work_s": work_s, "lineages": n, "levels": LEVELS, "concurrent": concurrent, "chunk_size": chunk_size,
        "wall_s": round(wall, 2), "ideal_s": round(ideal, 2),
        "overhead_fraction": round(1 - ideal / wall, 4),
        "overhead_per_lineage_s": round((wall * concurrent - work_s * n) / n, 3),
        "mlflow_runs": len(runs), "mlflow_writes_per_s": round(writes / wall, 1),
        "driver_peak_rss_mb": round(rss.peak / 2**20, 1), "failed": list(failed),
    }


def _with_work(work_s: float):
    def trainable(config: dict) -> None:
        config["lineage"]["work_s"] = work_s
        sleep_trainable(config)

    return trainable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=float, nargs="*", default=[1, 5, 20, 60], help="seconds of work per lineage")
    parser.add_argument("--lineages", type=int, default=4, help="lineages per work size")
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--count", type=int, nargs="*", default=[], help="also run this many 0.1 s lineages")
    parser.add_argument("--count-concurrent", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="one 1 s case and 20 short lineages")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "orchestration-cpu.json")
    args = parser.parse_args()
    if args.quick:
        args.work, args.lineages, args.count = [1], 2, [20]
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    cases, counts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for work in args.work:
            cases.append(run_case(Path(tmp), work, args.lineages, args.concurrent, args.chunk_size, 1.0))
            print(json.dumps(cases[-1]), flush=True)
        for n in args.count:
            counts.append(run_case(Path(tmp), 0.1, n, args.count_concurrent, args.chunk_size,
                                   2 / args.count_concurrent))
            print(json.dumps(counts[-1]), flush=True)
    ray.shutdown()
    import mlflow
    import ray as ray_module

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": "cpu",
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "versions": {"ray": ray_module.__version__, "mlflow": mlflow.__version__, "python": platform.python_version()},
        "tracking": "sqlite (embedded default)", "cases": cases, "count_cases": counts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'work_s':>7} {'lineages':>8} {'conc':>4} {'wall_s':>8} {'ideal_s':>8} {'overhead':>9} "
          f"{'per-lineage s':>13} {'driver MB':>9}")
    for c in cases + counts:
        print(f"{c['work_s']:>7} {c['lineages']:>8} {c['concurrent']:>4} {c['wall_s']:>8} {c['ideal_s']:>8} "
              f"{c['overhead_fraction']:>9.1%} {c['overhead_per_lineage_s']:>13} {c['driver_peak_rss_mb']:>9}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
