"""Running a sweep: MLflow prepared by the driver, then one Ray Tune trial per unfinished lineage."""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.plan import LineagePlan, plan_sweep
from orchestrator.specs import SweepSpec
from trainables.ids import parse_lineage_id
from trainables.tracking import (
    TAG, TrackingRef, ensure_experiment, ensure_parent_runs, search_all, set_lineage_status, sweep_members,
)
from trainables.trials import (
    SAMPLE_KEY, BundleTrial, LineageTrial, SearchTrial, grid_param_space, trial_lineages,
)

Echo = Callable[[str], None]


@dataclass(frozen=True)
class SweepOutcome:
    name: str
    n_lineages: int
    already_done: int
    ran: int
    failed: tuple[str, ...]  # lineage ids whose trials errored after every retry
    wall_s: float


def code_rev() -> str:
    """The git revision of the code that runs (or the package version outside a checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"impsweep-{version('impsweep')}"
        except PackageNotFoundError:
            return "unknown"


def prepare_tracking(sweep: SweepSpec) -> tuple[MlflowClient, str]:
    """Create the tracking store and the sweep's experiment once, in the driver, before any
    trial starts (concurrent first use of a SQLite store races on its schema migration)."""
    sweep.workdir_path.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(sweep.resolved_tracking_uri)
    artifact_location = sweep.artifact_location if not sweep.tracking_uri else None
    return client, ensure_experiment(client, sweep.name, artifact_location=artifact_location)


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster named by RAY_ADDRESS (a `ray job submit` sets it), else start a
    fresh local instance."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=num_cpus, **kwargs)


def run_sweep(sweep: SweepSpec, *, echo: Echo = print) -> SweepOutcome:
    """Run every lineage of `sweep` that is not done yet; recompute nothing that is."""
    start = time.perf_counter()
    client, experiment_id = prepare_tracking(sweep)
    rev = code_rev()
    if sweep.search is not None:
        failed, plans, done = _search(sweep, client, experiment_id, rev, echo)
        n = len(plans)
        ran = n - done
    else:
        plans = plan_sweep(sweep, client)
        parents = ensure_parent_runs(client, [p.spec for p in plans], experiment_id=experiment_id,
                                     sweep=sweep.name, code_rev=rev)
        _close_done(client, sweep, plans)
        todo = [p for p in plans if not p.finished]
        n, done, ran = len(plans), len(plans) - len(todo), len(todo)
        echo(f"sweep {sweep.name}: {n} lineages, {done} already done, {len(todo)} to run")
        failed = _grid(sweep, todo, parents, experiment_id, rev, echo) if todo else ()
        plans = plan_sweep(sweep, client) if todo else plans
    cut = _close_cut_off(client, sweep, plans, failed) if ran else 0
    wall = time.perf_counter() - start
    echo(f"sweep {sweep.name}: finished in {wall:.1f}s" + (f", {len(failed)} failed: {list(failed)}" if failed else "")
         + (f", {cut} cut off before their end (run again to resume them)" if cut else ""))
    return SweepOutcome(sweep.name, n, done, ran, failed, wall)


def _close_cut_off(client: MlflowClient, sweep: SweepSpec, plans: list[LineagePlan],
                   failed: tuple[str, ...]) -> int:
    """After Tune has returned (`plans` read since), close the parent runs an interrupted
    experiment (Ctrl-C) left RUNNING: it stops its trials without failing them, and ends their
    actors after a grace period, so no trial is left to close their runs. Unfinished lineages
    become KILLED, and one whose last level landed in the grace period FINISHED. Returns how
    many lineages are unfinished without having failed."""
    _close_done(client, sweep, plans)
    unfinished = {p.lineage_id for p in plans if not p.finished} - set(failed)
    _set_parent_status(client, sweep, unfinished, "KILLED", where="= 'RUNNING'")
    return len(unfinished)


def _close_done(client: MlflowClient, sweep: SweepSpec, plans: list[LineagePlan]) -> None:
    """Mark FINISHED the parent run of every lineage whose levels are all recorded: a driver
    killed between a trial's last level and its end leaves it RUNNING, and no trial will run
    the lineage again to close it."""
    done = {p.lineage_id for p in plans if p.finished}
    _set_parent_status(client, sweep, done, "FINISHED", where="!= 'FINISHED'")


def _set_parent_status(client: MlflowClient, sweep: SweepSpec, lineages: set[str], status: str, *,
                       where: str) -> None:
    """Set `status` on the parent runs of `lineages` (members of `sweep`) whose current status
    satisfies `where` (an MLflow filter clause on it); one search for them all."""
    for run in search_all(client, f"{sweep_members(sweep.name)} and attributes.status {where}") if lineages else ():
        if run.data.tags.get(f"{TAG}lineage_id") in lineages:
            set_lineage_status(client, run.info.run_id, status=status)


def _tracking(sweep: SweepSpec, experiment_id: str, rev: str, parent_run_id: str = "") -> TrackingRef:
    return TrackingRef(sweep.resolved_tracking_uri, experiment_id, parent_run_id, sweep.name, rev)


def _run_config(sweep: SweepSpec, echo: Echo, expected: int):
    from ray import tune

    from orchestrator.progress import ProgressCallback
    from orchestrator.stops import StopRecorder

    workdir = str(sweep.workdir_path.resolve())
    callbacks = [ProgressCallback(echo, expected=expected, workdir=workdir)]
    if sweep.search is not None:
        callbacks.append(StopRecorder(sweep.resolved_tracking_uri, sweep=sweep.name, workdir=workdir))
    return tune.RunConfig(
        name=sweep.name,
        storage_path=sweep.resolved_storage_path,
        failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
        # Tune's checkpoints are small pointers (the lineage keeps its own levels); keeping
        # them all avoids the forced experiment snapshot that num_to_keep triggers.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        callbacks=callbacks,
        verbose=0,
    )


def _grid(sweep: SweepSpec, todo: list[LineagePlan], parents: dict[str, str], experiment_id: str,
          rev: str, echo: Echo, trainable=None) -> tuple[str, ...]:
    """One trial per unfinished lineage, `chunk_size` lineages per Tuner: Tune's driver keeps
    every trial of an experiment in memory, so a 10,000-lineage sweep runs as a series of
    bounded experiments. A new driver after a crash plans again from the workdir and MLflow, so
    nothing depends on Tune's experiment state. `trainable` replaces the lineage trainable
    (benchmarks measure the orchestration alone with it)."""
    from trainables.tune_entry import lineage_trainable

    ensure_ray()
    workdir = str(sweep.workdir_path.resolve())
    trials = _trial_configs(todo, workdir, {
        p.lineage_id: _tracking(sweep, experiment_id, rev, parents[p.lineage_id]) for p in todo})
    note = fuse_note(sweep, trials)
    if note:
        echo(note)
    failed: list[str] = []
    chunks = range(0, len(trials), sweep.chunk_size)
    for number, start in enumerate(chunks, start=1):
        chunk = trials[start : start + sweep.chunk_size]
        if len(chunks) > 1:
            echo(f"sweep {sweep.name}: chunk {number}/{len(chunks)} ({len(chunk)} lineages)")
        failed += _fit_grid(sweep, chunk, trainable or lineage_trainable, echo)
    return tuple(failed)


def _trial_configs(todo: list[LineagePlan], workdir: str,
                   tracking: dict[str, TrackingRef]) -> list[LineageTrial | BundleTrial]:
    """One trial per lineage, or per bundle of `fuse` lineages of one configuration trained
    fused. A lineage that already has checkpoints resumes in the mode it started in."""
    from trainables.fused import check_mode

    singles, groups = [], {}
    for plan in todo:
        item = LineageTrial(plan.lineage_id, plan.spec, workdir, tracking[plan.lineage_id])
        if plan.spec.fuse > 1 and _resumable_fused(check_mode, workdir, plan.lineage_id):
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


def _resumable_fused(check_mode, workdir: str, lineage: str) -> bool:
    try:
        check_mode(workdir, lineage, fused=True)
    except ValueError:  # started unfused: it finishes unfused
        return False
    return True


def _fit_grid(sweep: SweepSpec, trials: list[LineageTrial | BundleTrial], trainable, echo: Echo) -> tuple[str, ...]:
    from ray import tune

    from trainables.tune_entry import trial_name

    tuner = tune.Tuner(
        tune.with_resources(trainable, _resources(sweep)),
        param_space=grid_param_space(trials, grid_search=tune.grid_search),
        tune_config=tune.TuneConfig(
            max_concurrent_trials=sweep.max_concurrent, trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
            # Every trial asks for the same resources: a finished trial's worker process (with
            # torch imported and the dataset cached) takes the next lineage.
            reuse_actors=True,
        ),
        run_config=_run_config(sweep, echo, sum(len(t.lineage_ids) for t in trials)),
    )
    return _failed(tuner.fit())


def _search(sweep: SweepSpec, client: MlflowClient, experiment_id: str, rev: str,
            echo: Echo) -> tuple[tuple[str, ...], list[LineagePlan], int]:
    """Optuna proposes `num_samples` lineages; the sweep ends with exactly that many, however
    often its driver dies. A new driver restores the Tune experiment (the study, the scheduler
    and every trial with it) when Tune's last snapshot of it knows every lineage proposed so
    far. A trial younger than that snapshot (Tune takes one every 10 s or more) would be
    forgotten and its place proposed anew, so otherwise the driver starts a new experiment from
    the plan: a study told the results of the finished lineages, asking first for the
    unfinished ones (they resume from their checkpoints), then sampling the rest.

    Like a grid, a search runs as Tune experiments of at most `chunk_size` lineages (Tune's
    driver keeps every trial of an experiment in memory), each a study rebuilt from the plan;
    an ASHA scheduler compares the lineages of one experiment. A point proposed twice is one
    lineage, so chunks go on until `num_samples` distinct lineages are finished, or failed in
    this run, or a chunk adds none (a search space with fewer points).

    Returns (lineages failed in this run, the plan read after the last experiment, how many
    lineages were finished before this run)."""
    from ray import tune

    from trainables.tune_entry import lineage_trainable

    search = sweep.search
    path = f"{sweep.resolved_storage_path.rstrip('/')}/{sweep.name}"
    trainable = tune.with_resources(lineage_trainable, _resources(sweep))
    plans = plan_sweep(sweep, client)[: search.num_samples]
    finished = [p for p in plans if p.finished]
    already = len(finished)
    _close_done(client, sweep, plans)
    todo = search.num_samples - len(finished)
    stopped = sum(p.state == "stopped" for p in finished)
    echo(f"sweep {sweep.name}: {search.num_samples} lineages ({search.sampler} search), "
         f"{len(plans)} proposed so far, {len(finished)} done"
         + (f" ({stopped} stopped early by the scheduler)" if stopped else "") + f", {todo} to run")
    if not todo:
        return (), plans, already
    ensure_ray()
    failed: list[str] = []
    replan = False
    if tune.Tuner.can_restore(path) and {p.lineage_id for p in plans} <= _snapshot_lineages(path):
        echo(f"sweep {sweep.name}: resuming the Tune experiment {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        failed += _failed(tuner.fit())
        replan = True
    progress, number = None, 0
    while True:
        if replan:
            plans = plan_sweep(sweep, client)[: search.num_samples]
            finished = [p for p in plans if p.finished]
        replan = True
        open_ = [p for p in plans if not p.finished and p.lineage_id not in failed]
        todo = search.num_samples - len(finished) - (len(plans) - len(finished) - len(open_))
        if todo <= 0 or (len(finished), len(failed)) == progress:
            break
        progress, number = (len(finished), len(failed)), number + 1
        size = min(todo, sweep.chunk_size)
        if number > 1 or size < todo:
            echo(f"sweep {sweep.name}: chunk {number} ({size} of {todo} lineages to run)")
        failed += _fit_search(sweep, trainable, plans, finished, open_, size, experiment_id, rev, echo)
    if todo > 0 and not failed:
        echo(f"sweep {sweep.name}: the last chunk added no lineage (the search space repeats its "
             f"points); {len(finished)} of {search.num_samples} lineages")
    return tuple(failed), plans, already


def _fit_search(sweep: SweepSpec, trainable, plans: list[LineagePlan], finished: list[LineagePlan],
                open_: list[LineagePlan], size: int, experiment_id: str, rev: str, echo: Echo) -> tuple[str, ...]:
    """One Tune experiment of `size` lineages: the unfinished ones first, then new samples."""
    from ray import tune

    from trainables.tune_entry import trial_name

    search = sweep.search
    points = {p.lineage_id: search.point(p.spec.model_dump(mode="json")) for p in plans}
    searcher = search.searcher(key=SAMPLE_KEY, pending=[points[p.lineage_id] for p in open_],
                               evaluated=[(points[p.lineage_id], p.metrics.get(search.metric)) for p in finished])
    trial = SearchTrial(sweep.base, str(sweep.workdir_path.resolve()), _tracking(sweep, experiment_id, rev))
    tuner = tune.Tuner(
        trainable,
        param_space=trial.to_config(),
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=search.scheduler(), num_samples=size,
            max_concurrent_trials=sweep.max_concurrent, trial_name_creator=trial_name,
            trial_dirname_creator=trial_name, reuse_actors=True,
        ),
        run_config=_run_config(sweep, echo, size),
    )
    return _failed(tuner.fit())


def _snapshot_lineages(path: str) -> set[str]:
    """Lineage ids of the trials in Tune's last snapshot of the experiment at `path`."""
    from ray import tune

    from trainables.tune_entry import trial_name

    try:
        return {trial_name(trial) for trial in tune.ExperimentAnalysis(path).trials}
    except Exception:  # an unreadable snapshot is no snapshot: the search goes on from MLflow
        return set()


def _resources(sweep: SweepSpec) -> dict[str, float]:
    return {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu}


def _failed(results) -> tuple[str, ...]:
    """Lineage ids of the trials that failed after every retry (all lineages of a bundle)."""
    failed = []
    for result in results:
        if result.error is None:
            continue
        failed += trial_lineages(result.config) or [str(result.metrics.get("lineage_id") or result.path)]
    return tuple(failed)
