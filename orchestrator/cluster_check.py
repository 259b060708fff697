"""Before anything trains on a Ray cluster: refuse local paths that its nodes do not share.

On a cluster of more than one node, each local-path folder the sweep writes to (the workdir, a
SQLite tracking store, Ray Tune's storage) is probed: the driver writes a marker there and a task
pinned to every alive node reads it back. A folder some node cannot see is a sweep-file error
(exit 2) naming the field and the fix; so is a cluster without a `tracking_uri` (a SQLite file
under each node's workdir is no shared record). One node, an object-store URI or a real shared
mount pass. Nodes the autoscaler adds later are not probed: the message of a pass says so.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

from orchestrator.errors import SpecError
from orchestrator.experiments import Echo, ensure_ray
from orchestrator.specs import SweepSpec
from trainables.storage import LocalStore, is_object_store

PROBE_TIMEOUT_S = 120.0  # a node must start a worker for its probe: slow on a busy node
_passed: set[tuple[str, str, frozenset[str]]] = set()  # (field, folder, node ids) seen shared by this process


def probe_name(token: str) -> str:
    """The marker's name in a probed folder (hidden: listings skip it)."""
    return f".impsweep-shared-{token}"


def local_folders(sweep: SweepSpec) -> dict[str, Path]:
    """Sweep field -> the local folder it makes every node write to (object stores, servers aside)."""
    folders = {}
    if not is_object_store(sweep.workdir):
        folders["workdir"] = Path(sweep.resolved_workdir)
    uri = sweep.resolved_tracking_uri
    if sweep.tracking_uri and uri.startswith("sqlite:///"):
        folders["tracking_uri"] = Path(uri[len("sqlite:///"):]).resolve().parent
    if sweep.storage_path and "://" not in sweep.storage_path:
        folders["storage_path"] = Path(sweep.storage_path).resolve()
    return folders


def check_cluster_storage(sweep: SweepSpec, *, echo: Echo) -> None:
    """Raise SpecError if `sweep` cannot keep its results on the cluster it runs on (see the
    module docstring). Connects to the cluster first; does nothing on a local Ray instance."""
    import ray

    if not os.environ.get("RAY_ADDRESS") and not ray.is_initialized():
        return  # impsweep starts a local instance: one node
    ensure_ray()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    errors = []
    if not sweep.tracking_uri:
        errors.append(f"tracking_uri: not set, on a Ray cluster of {len(nodes)} nodes: the default SQLite file "
                      "under the workdir would be a separate record on every node; give an `mlflow server` URL "
                      "(e.g. http://<head-ip>:5000) or a SQLite file on a shared mount")
    ids = frozenset(n["NodeID"] for n in nodes)
    probed = []
    for field, folder in local_folders(sweep).items():
        if (field, str(folder), ids) in _passed:  # the CLI checks before the library does
            continue
        unseen = _nodes_not_seeing(folder, nodes, echo=echo)
        if unseen:
            errors.append(f"{field}: {getattr(sweep, field)!r} is a local path that {len(unseen)} of the "
                          f"cluster's {len(nodes)} nodes cannot see ({', '.join(unseen)}); use an object-store "
                          "URI (s3://bucket/prefix) or a folder on a mount every node shares")
        else:
            _passed.add((field, str(folder), ids))
            probed.append(field)
    if errors:
        raise SpecError(errors, "cluster")
    if probed:
        echo(f"cluster: {', '.join(probed)} seen by all {len(nodes)} nodes (nodes added later are not checked)")


def _nodes_not_seeing(folder: Path, nodes: list[dict], *, echo: Echo) -> list[str]:
    """Names of the alive `nodes` on which a marker written into `folder` here is not there.
    Leaves `folder` as it found it (a folder it had to create is removed again)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    store, token = LocalStore(folder), uuid.uuid4().hex
    name = probe_name(token)
    store.write_bytes(name, token.encode())
    try:
        read = ray.remote(num_cpus=0, max_retries=0)(_read_probe)
        pending = {read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                   .remote(str(folder), name): _node_name(n) for n in nodes}
        ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=PROBE_TIMEOUT_S)
        for ref in late:
            echo(f"cluster: node {pending[ref]} did not answer within {PROBE_TIMEOUT_S:.0f} s; "
                 f"not checked whether it sees {folder}")
            ray.cancel(ref, force=True)
        return [pending[ref] for ref in ready if ray.get(ref) != token]
    finally:
        store.delete(name)
        for path in missing:  # innermost first
            try:
                path.rmdir()
            except OSError:  # not empty: someone else writes there now
                break


def _node_name(node: dict) -> str:
    return f"{node.get('NodeManagerHostname') or node.get('NodeManagerAddress')} ({node['NodeID'][:8]})"


def _read_probe(folder: str, name: str) -> str | None:
    """On a node: the marker's content, or None if the node does not see it."""
    try:
        return LocalStore(folder).read_bytes(name).decode()
    except OSError:
        return None
