"""What every Ray Tune experiment of a sweep shares, grid or search: the Ray connection, each
trial's resources and tracking, the run config, and the lineages its failed trials leave."""
from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from orchestrator.specs import SweepSpec
from trainables.tracking import TrackingRef
from trainables.trials import trial_lineages

Echo = Callable[[str], None]
LOOPBACK = "127.0.0.1"


REVISION_FILE = ".impsweep-revision"  # written by `make cluster-up` where the code is synced from


def code_rev(root: Path | None = None) -> str:
    """The revision of the code under `root` (default: this checkout): a git checkout's full HEAD
    sha, with "-dirty" when tracked files differ from it; else the revision recorded in
    `REVISION_FILE` (a copy synced without `.git`, e.g. to a cluster's nodes); else
    "impsweep-<package version>"."""
    root = root if root is not None else Path(__file__).resolve().parent.parent
    return _git_rev(root) or _recorded_rev(root) or _package_rev()


def _git_rev(root: Path) -> str | None:
    if not (root / ".git").exists():  # a folder inside some other checkout is not ours
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--"],
                               capture_output=True, timeout=5).returncode == 1
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def _recorded_rev(root: Path) -> str | None:
    try:
        return (root / REVISION_FILE).read_text().strip() or None
    except OSError:
        return None


def _package_rev() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"impsweep-{version('impsweep')}"
    except PackageNotFoundError:
        return "unknown"


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster named by RAY_ADDRESS (a `ray job submit` sets it; the cluster chose
    its addresses), else start a fresh local instance whose every server listens on 127.0.0.1
    only: nothing of a sweep on one machine is reachable from the network."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    with _loopback_node():
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address=LOOPBACK, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Ray 2.60 binds a node's servers (GCS, raylet, workers, agents) to 127.0.0.1 alone only when
    the node's address is 127.0.0.1, and otherwise to every interface; but `ray.init` replaces
    127.0.0.1 by the machine's interface address unless Ray's one-machine mode is on
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read once as ray is imported, so too late to set here).
    The flag it sets is turned off while the node starts, and restored."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def with_trial_resources(trainable: Callable[[dict], None], sweep: SweepSpec) -> Any:
    """`trainable` asking Tune for the sweep's resources per trial."""
    from ray import tune

    return tune.with_resources(trainable, {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu})


def tracking_ref(sweep: SweepSpec, *, experiment_id: str, rev: str, parent_run_id: str = "") -> TrackingRef:
    """Where a trial of `sweep` records its lineage (no parent run: the trial finds or creates it)."""
    return TrackingRef(sweep.resolved_tracking_uri, experiment_id, parent_run_id, sweep.name, rev,
                       checkpoint_artifacts=sweep.checkpoint_artifacts)


def tune_run_config(sweep: SweepSpec, *, echo: Echo, expected: int) -> Any:
    """Tune's RunConfig of an experiment of `expected` lineages: progress on `echo`, and for a
    search the record of the lineages its scheduler stops."""
    from ray import tune

    from orchestrator.progress import ProgressCallback
    from orchestrator.stops import StopRecorder

    workdir = sweep.resolved_workdir
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


def failed_lineages(results: Iterable[Any]) -> tuple[str, ...]:
    """Lineage ids of the trials that failed after every retry (all lineages of a bundle; a
    search trial's as it reported it, else its path). results: Tune's ResultGrid."""
    failed: list[str] = []
    for result in results:
        if result.error is None:
            continue
        failed += trial_lineages(result.config) or [str(result.metrics.get("lineage_id") or result.path)]
    return tuple(failed)
