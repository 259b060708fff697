"""Running a sweep: MLflow prepared by the driver, then one Ray Tune trial per unfinished lineage
(a search sweep's driver is `orchestrator.search_driver`)."""
from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from orchestrator.cluster_check import check_cluster_storage
from orchestrator.experiments import (
    Echo, code_rev, ensure_ray, failed_lineages, tracking_ref, tune_run_config, with_trial_resources,
)
from orchestrator.interrupts import SigintWatch
from orchestrator.plan import LineagePlan, close_cut_off, close_done, plan_sweep
from orchestrator.search_driver import run_search
from orchestrator.specs import SweepSpec
from trainables.checkpoints import LineageCheckpoints
from trainables.storage import is_object_store
from trainables.ids import parse_lineage_id
from trainables.level_index import COMPLETE_TAG, rebuild_index
from trainables.tracking import TrackingRef, ensure_experiment, ensure_parent_runs
from trainables.trials import BundleTrial, LineageTrial, grid_param_space


@dataclass(frozen=True)
class SweepOutcome:
    name: str
    n_lineages: int
    already_done: int
    ran: int
    failed: tuple[str, ...]  # lineage ids whose trials errored after every retry
    wall_s: float
    interrupted: bool  # Ctrl-C (SIGINT) ended the run early: lineages are left to run


def prepare_tracking(sweep: SweepSpec) -> tuple[MlflowClient, str]:
    """Create the tracking store and the sweep's experiment once, in the driver, before any
    trial starts (concurrent first use of a SQLite store races on its schema migration)."""
    if not is_object_store(sweep.workdir):
        Path(sweep.resolved_workdir).mkdir(parents=True, exist_ok=True)
    client = MlflowClient(sweep.resolved_tracking_uri)
    # A tracking server decides where artifacts go; any other store is told (never the current directory).
    served = sweep.resolved_tracking_uri.startswith(("http://", "https://"))
    artifact_location = None if served else sweep.artifact_location
    experiment_id = ensure_experiment(client, sweep.name, artifact_location=artifact_location)
    if client.get_experiment(experiment_id).tags.get(COMPLETE_TAG) != "1":  # new, or logged before the index
        rebuild_index(client, experiment_id)
    return client, experiment_id


def run_sweep(sweep: SweepSpec, *, echo: Echo = print) -> SweepOutcome:
    """Run every lineage of `sweep` that is not done yet; recompute nothing that is. A Ctrl-C
    ends the running Tune experiment gracefully and starts no further one."""
    start = time.perf_counter()
    check_cluster_storage(sweep, echo=echo)  # before anything is written
    client, experiment_id = prepare_tracking(sweep)
    rev = code_rev()
    watch = SigintWatch()
    if sweep.search is not None:
        searched = run_search(sweep, client, experiment_id=experiment_id, rev=rev, echo=echo, watch=watch)
        failed, plans, done = searched.failed, searched.plans, searched.already_done
        n = len(plans)
        ran = n - done
    else:
        plans = plan_sweep(sweep, client)
        parents = ensure_parent_runs(client, [p.spec for p in plans], experiment_id=experiment_id,
                                     sweep=sweep.name, code_rev=rev)
        close_done(client, sweep, plans=plans)
        todo = [p for p in plans if not p.finished]
        n, done, ran = len(plans), len(plans) - len(todo), len(todo)
        echo(f"sweep {sweep.name}: {n} lineages, {done} already done, {len(todo)} to run")
        failed = (run_grid(sweep, todo, parents=parents, experiment_id=experiment_id, rev=rev, echo=echo,
                           watch=watch) if todo else ())
        plans = plan_sweep(sweep, client) if todo else plans
    cut = close_cut_off(client, sweep, plans=plans, failed=failed) if ran else 0
    wall = time.perf_counter() - start
    echo(f"sweep {sweep.name}: " + (f"interrupted after {wall:.1f}s" if watch.interrupted else f"finished in {wall:.1f}s")
         + (f", {len(failed)} failed: {list(failed)}" if failed else "")
         + (f", {cut} lineages unfinished (run again to resume them)" if cut else ""))
    return SweepOutcome(sweep.name, n, done, ran, failed, wall, watch.interrupted)


def run_grid(sweep: SweepSpec, todo: list[LineagePlan], *, parents: dict[str, str], experiment_id: str,
             rev: str, echo: Echo, trainable: Callable[[dict], None] | None = None,
             watch: SigintWatch | None = None) -> tuple[str, ...]:
    """One trial per unfinished lineage, `chunk_size` lineages per Tuner: Tune's driver keeps
    every trial of an experiment in memory, so a 10,000-lineage sweep runs as a series of
    bounded experiments. A new driver after a crash plans again from the workdir and MLflow, so
    nothing depends on Tune's experiment state. An interrupted experiment (`watch`) is the last.
    `trainable` replaces the lineage trainable (benchmarks measure the orchestration alone with it)."""
    from trainables.tune_entry import lineage_trainable

    ensure_ray()
    workdir = sweep.resolved_workdir
    refs = {p.lineage_id: tracking_ref(sweep, experiment_id=experiment_id, rev=rev, parent_run_id=parents[p.lineage_id])
            for p in todo}
    trials = grid_trials(todo, workdir=workdir, refs=refs)
    note = fuse_note(sweep, trials)
    if note:
        echo(note)
    watch = watch or SigintWatch()
    failed: list[str] = []
    chunks = range(0, len(trials), sweep.chunk_size)
    for number, start in enumerate(chunks, start=1):
        chunk = trials[start : start + sweep.chunk_size]
        if len(chunks) > 1:
            echo(f"sweep {sweep.name}: chunk {number}/{len(chunks)} ({len(chunk)} lineages)")
        failed += _fit_grid(sweep, chunk, trainable or lineage_trainable, echo=echo, watch=watch)
        if watch.interrupted:
            break
    return tuple(failed)


def grid_trials(todo: list[LineagePlan], *, workdir: str,
                refs: dict[str, TrackingRef]) -> list[LineageTrial | BundleTrial]:
    """One trial per lineage, or per bundle of `fuse` lineages of one configuration trained
    fused. A lineage that already has checkpoints resumes in the mode it started in."""
    singles, groups = [], {}
    for plan in todo:
        item = LineageTrial(plan.lineage_id, plan.spec, workdir, refs[plan.lineage_id])
        if plan.spec.fuse > 1 and _resumable_fused(workdir, plan.lineage_id):
            key = (parse_lineage_id(plan.lineage_id)[0], plan.spec.precision, plan.spec.fuse)
            groups.setdefault(key, []).append(item)
        else:
            singles.append(item)
    bundles = [BundleTrial(tuple(items[i : i + fuse])) for (_, _, fuse), items in groups.items()
               for i in range(0, len(items), fuse)]
    return [b if len(b.lineages) > 1 else b.lineages[0] for b in bundles] + singles


def fuse_note(sweep: SweepSpec, trials: list[LineageTrial | BundleTrial]) -> str | None:
    """A word when lineages are fused on CPU-only trials: there the stacked model does the same
    matrix products as the lineages one by one, so fusing saves only per-step overhead
    (benchmarks/fused_bench.py: K = 16 LeNet 1.0x, K = 8 resnet20 0.55x on 2 cores)."""
    bundles = [t for t in trials if isinstance(t, BundleTrial)]
    if not bundles or sweep.resources.gpu > 0:
        return None
    return (f"sweep {sweep.name}: {sum(len(b.lineages) for b in bundles)} lineages fused into {len(bundles)} "
            "trials on CPU only (resources.gpu = 0); fusing pays off on GPUs, on a CPU it measured 0.55-1.0x "
            "the speed of separate lineages, so consider fuse: 1")


def _resumable_fused(workdir: str, lineage: str) -> bool:
    try:
        LineageCheckpoints(workdir, lineage).check_mode(fused=True)
    except ValueError:  # started unfused: it finishes unfused
        return False
    return True


def _fit_grid(sweep: SweepSpec, trials: list[LineageTrial | BundleTrial], trainable, *, echo: Echo,
              watch: SigintWatch) -> tuple[str, ...]:
    from ray import tune

    from trainables.tune_entry import trial_name

    tuner = tune.Tuner(
        with_trial_resources(trainable, sweep),
        param_space=grid_param_space(trials, grid_search=tune.grid_search),
        tune_config=tune.TuneConfig(
            max_concurrent_trials=sweep.max_concurrent, trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
            # Every trial asks for the same resources: a finished trial's worker process (with
            # torch imported and the dataset cached) takes the next lineage.
            reuse_actors=True,
        ),
        run_config=tune_run_config(sweep, echo=echo, expected=sum(len(t.lineage_ids) for t in trials)),
    )
    return failed_lineages(watch.fit(tuner))
