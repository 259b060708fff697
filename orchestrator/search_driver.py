"""The driver of a search sweep: Optuna proposes lineages to Ray Tune experiments until the sweep
has `num_samples` of them, however often the driver dies."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow.tracking import MlflowClient

from orchestrator.experiments import (
    Echo, ensure_ray, failed_lineages, tracking_ref, tune_run_config, with_trial_resources,
)
from orchestrator.interrupts import SigintWatch
from orchestrator.plan import LineagePlan, close_done, plan_sweep
from orchestrator.specs import SweepSpec
from trainables.tracking import TrackingRef
from trainables.trials import SAMPLE_KEY, SearchTrial


@dataclass(frozen=True)
class SearchRun:
    failed: tuple[str, ...]  # lineage ids failed in this run
    plans: tuple[LineagePlan, ...]  # the plan read after the last experiment
    already_done: int  # lineages finished before this run


def run_search(sweep: SweepSpec, client: MlflowClient, *, experiment_id: str, rev: str, echo: Echo,
               watch: SigintWatch) -> SearchRun:
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
    this run, or a chunk adds none (a search space with fewer points), or one is interrupted
    (`watch`: Ctrl-C)."""
    from trainables.tune_entry import lineage_trainable

    plans = _proposed(sweep, client)
    already = sum(p.finished for p in plans)
    close_done(client, sweep, plans=plans)
    echo(_opening(sweep, plans))
    if already == sweep.search.num_samples:
        return SearchRun((), tuple(plans), already)
    ensure_ray()
    trainable = with_trial_resources(lineage_trainable, sweep)
    resumed = _resume(sweep, trainable, plans, echo=echo, watch=watch)
    failed, plans = _run_chunks(sweep, client, plans=plans, failed=list(resumed or ()), replan=resumed is not None,
                                trainable=trainable, ref=tracking_ref(sweep, experiment_id=experiment_id, rev=rev),
                                echo=echo, watch=watch)
    return SearchRun(tuple(failed), tuple(plans), already)


def _proposed(sweep: SweepSpec, client: MlflowClient) -> list[LineagePlan]:
    return plan_sweep(sweep, client)[: sweep.search.num_samples]


def _opening(sweep: SweepSpec, plans: list[LineagePlan]) -> str:
    search = sweep.search
    finished = [p for p in plans if p.finished]
    stopped = sum(p.state == "stopped" for p in finished)
    return (f"sweep {sweep.name}: {search.num_samples} lineages ({search.sampler} search), "
            f"{len(plans)} proposed so far, {len(finished)} done"
            + (f" ({stopped} stopped early by the scheduler)" if stopped else "")
            + f", {search.num_samples - len(finished)} to run")


def _resume(sweep: SweepSpec, trainable: Any, plans: list[LineagePlan], *, echo: Echo,
            watch: SigintWatch) -> tuple[str, ...] | None:
    """Runs on the Tune experiment of an earlier driver when its last snapshot knows every
    lineage proposed so far. Returns the lineages failed in it (None: nothing was resumed)."""
    from ray import tune

    path = f"{sweep.resolved_storage_path.rstrip('/')}/{sweep.name}"
    if not (tune.Tuner.can_restore(path) and {p.lineage_id for p in plans} <= _snapshot_lineages(path)):
        return None
    echo(f"sweep {sweep.name}: resuming the Tune experiment {path}")
    tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    return failed_lineages(watch.fit(tuner))


def _run_chunks(sweep: SweepSpec, client: MlflowClient, *, plans: list[LineagePlan], failed: list[str],
                replan: bool, trainable: Any, ref: TrackingRef, echo: Echo,
                watch: SigintWatch) -> tuple[list[str], list[LineagePlan]]:
    """New experiments until `num_samples` distinct lineages are finished or failed in this run,
    or one adds none, or one was interrupted. replan: read the plan first (an experiment ran
    since `plans` was read). Returns the lineages failed in this run and the plan read last."""
    wanted = sweep.search.num_samples
    progress, number = None, 0
    while True:
        if replan:
            plans = _proposed(sweep, client)
        replan = True
        finished = [p for p in plans if p.finished]
        open_ = [p for p in plans if not p.finished and p.lineage_id not in failed]
        todo = wanted - len(finished) - (len(plans) - len(finished) - len(open_))
        if todo <= 0 or (len(finished), len(failed)) == progress or watch.interrupted:
            break
        progress, number = (len(finished), len(failed)), number + 1
        size = min(todo, sweep.chunk_size)
        if number > 1 or size < todo:
            echo(f"sweep {sweep.name}: chunk {number} ({size} of {todo} lineages to run)")
        failed += _fit_search(sweep, trainable, plans=plans, finished=finished, open_=open_, size=size, ref=ref,
                              echo=echo, watch=watch)
    if todo > 0 and not failed and not watch.interrupted:
        echo(f"sweep {sweep.name}: the last chunk added no lineage (the search space repeats its "
             f"points); {len(finished)} of {wanted} lineages")
    return failed, plans


def _fit_search(sweep: SweepSpec, trainable: Any, *, plans: list[LineagePlan], finished: list[LineagePlan],
                open_: list[LineagePlan], size: int, ref: TrackingRef, echo: Echo,
                watch: SigintWatch) -> tuple[str, ...]:
    """One Tune experiment of `size` lineages: the unfinished ones first, then new samples."""
    from ray import tune

    from trainables.tune_entry import trial_name

    search = sweep.search
    points = {p.lineage_id: search.point(p.spec.model_dump(mode="json")) for p in plans}
    searcher = search.searcher(key=SAMPLE_KEY, pending=[points[p.lineage_id] for p in open_],
                               evaluated=[(points[p.lineage_id], p.metrics.get(search.metric)) for p in finished])
    trial = SearchTrial(sweep.base, sweep.resolved_workdir, ref)
    tuner = tune.Tuner(
        trainable,
        param_space=trial.to_config(),
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=search.scheduler(), num_samples=size,
            max_concurrent_trials=sweep.max_concurrent, trial_name_creator=trial_name,
            trial_dirname_creator=trial_name, reuse_actors=True,
        ),
        run_config=tune_run_config(sweep, echo=echo, expected=size),
    )
    return failed_lineages(watch.fit(tuner))


def _snapshot_lineages(path: str) -> set[str]:
    """Lineage ids of the trials in Tune's last snapshot of the experiment at `path`."""
    from ray import tune

    from trainables.tune_entry import trial_name

    try:
        return {trial_name(trial) for trial in tune.ExperimentAnalysis(path).trials}
    except Exception:  # an unreadable snapshot is no snapshot: the search goes on from MLflow
        return set()
