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
from trainables.tracking import TrackingRef, ensure_experiment, ensure_parent_run

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
    return client, ensure_experiment(client, sweep.name, artifact_location)


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
    plans = plan_sweep(sweep, client)
    rev = code_rev()
    parents = {
        p.lineage_id: ensure_parent_run(client, experiment_id, p.spec, sweep=sweep.name, code_rev=rev)
        for p in plans
    }
    todo = [p for p in plans if p.state != "done"]
    done = len(plans) - len(todo)
    echo(f"sweep {sweep.name}: {len(plans)} lineages, {done} already done, {len(todo)} to run")
    failed: tuple[str, ...] = ()
    if todo:
        failed = _tune(sweep, todo, parents, experiment_id, rev, echo)
    wall = time.perf_counter() - start
    echo(f"sweep {sweep.name}: finished in {wall:.1f}s" + (f", {len(failed)} failed: {list(failed)}" if failed else ""))
    return SweepOutcome(sweep.name, len(plans), done, len(todo), failed, wall)


def _tune(sweep: SweepSpec, todo: list[LineagePlan], parents: dict[str, str], experiment_id: str,
          rev: str, echo: Echo) -> tuple[str, ...]:
    from ray import tune

    from orchestrator.progress import ProgressCallback
    from trainables.tune_entry import lineage_trainable

    ensure_ray()
    workdir = str(sweep.workdir_path.resolve())
    configs = []
    for plan in todo:
        ref = TrackingRef(sweep.resolved_tracking_uri, experiment_id, parents[plan.lineage_id], sweep.name, rev)
        configs.append({"lineage_id": plan.lineage_id, "spec": plan.spec.model_dump(mode="json"),
                        "workdir": workdir, "tracking": ref.__dict__})
    resources = {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu}
    tuner = tune.Tuner(
        tune.with_resources(lineage_trainable, resources),
        param_space={"lineage": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=sweep.max_concurrent,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=sweep.name,
            storage_path=str(sweep.workdir_path.resolve() / "ray"),
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            # Tune's checkpoints are small pointers (the lineage keeps its own levels); keeping
            # them all avoids the forced experiment snapshot that num_to_keep triggers.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            callbacks=[ProgressCallback(echo, {p.lineage_id: p.n_levels for p in todo})],
            verbose=0,
        ),
    )
    results = tuner.fit()
    return tuple(
        r.config["lineage"]["lineage_id"] for r in results if r.error is not None
    )


def _trial_name(trial) -> str:
    return trial.config["lineage"]["lineage_id"]

