"""What the driver closes after Tune returns: lineages an interrupted experiment cut off."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from orchestrator.launch import _close_cut_off, prepare_tracking
from orchestrator.plan import plan_sweep
from orchestrator.specs import load_sweep
from trainables.ids import lineage_id
from trainables.tracking import ensure_parent_runs, set_lineage_status


def test_running_parent_runs_of_unfinished_lineages_become_killed(tmp_path):
    sweep = load_sweep({"name": "cut", "workdir": str(tmp_path / "w"), "grid": {"seed": [0, 1, 2]},
                        "model": "lenet_300_100", "dataset": "digits", "train": {"epochs": 1},
                        "prune": {"levels": 1}})
    client, experiment = prepare_tracking(sweep)
    parents = ensure_parent_runs(client, experiment, list(sweep.lineages), sweep="cut", code_rev="x")
    running, waiting, failed = (lineage_id(spec) for spec in sweep.lineages)
    set_lineage_status(client, parents[running], "RUNNING")  # its trial was stopped mid-level
    set_lineage_status(client, parents[failed], "RUNNING")  # its trial failed; Tune reported it
    assert _close_cut_off(client, sweep, plan_sweep(sweep, client), (failed,)) == 2  # `waiting` never started: still to run
    status = {lid: MlflowClient(sweep.resolved_tracking_uri).get_run(run).info.status for lid, run in parents.items()}
    assert status == {running: "KILLED", waiting: "SCHEDULED", failed: "RUNNING"}
