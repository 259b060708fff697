"""What the driver closes after Tune returns: lineages an interrupted experiment cut off."""
from __future__ import annotations

from dataclasses import replace

from mlflow.tracking import MlflowClient

from orchestrator.launch import fuse_note, grid_trials, prepare_tracking
from orchestrator.plan import close_cut_off, plan_sweep
from orchestrator.specs import load_sweep
from trainables.ids import lineage_id
from trainables.tracking import TrackingRef, ensure_parent_runs, set_lineage_status


def test_running_parent_runs_of_unfinished_lineages_become_killed(tmp_path):
    sweep = load_sweep({"name": "cut", "workdir": str(tmp_path / "w"), "grid": {"seed": [0, 1, 2]},
                        "model": "lenet_300_100", "dataset": "digits", "train": {"epochs": 1},
                        "prune": {"levels": 1}})
    client, experiment = prepare_tracking(sweep)
    parents = ensure_parent_runs(client, list(sweep.lineages), experiment_id=experiment, sweep="cut", code_rev="x")
    running, waiting, failed = (lineage_id(spec) for spec in sweep.lineages)
    set_lineage_status(client, parents[running], status="RUNNING")  # its trial was stopped mid-level
    set_lineage_status(client, parents[failed], status="RUNNING")  # its trial failed; Tune reported it
    # `waiting` never started: still to run
    assert close_cut_off(client, sweep, plans=plan_sweep(sweep, client), failed=(failed,)) == 2
    status = {lid: MlflowClient(sweep.resolved_tracking_uri).get_run(run).info.status for lid, run in parents.items()}
    assert status == {running: "KILLED", waiting: "SCHEDULED", failed: "RUNNING"}


def _refs(plans) -> dict[str, TrackingRef]:
    return {p.lineage_id: TrackingRef("sqlite:///mlflow.db", "1", "", "fz", "x") for p in plans}


def _fused_sweep(tmp_path, fuse: int, gpu: float):
    return load_sweep({"name": "fz", "workdir": str(tmp_path / "w"), "grid": {"seed": [0, 1, 2, 3]},
                       "model": "lenet_300_100", "dataset": "digits", "train": {"epochs": 1},
                       "prune": {"levels": 1}, "fuse": fuse, "resources": {"cpu": 1, "gpu": gpu}})


def test_fusing_on_cpu_only_trials_gets_a_note(tmp_path):
    sweep = _fused_sweep(tmp_path, fuse=2, gpu=0)
    plans = plan_sweep(sweep, None)
    configs = grid_trials(plans, workdir=str(tmp_path / "w"), refs=_refs(plans))
    assert [len(c.lineages) for c in configs] == [2, 2]
    note = fuse_note(sweep, configs)
    assert note is not None and "4 lineages fused into 2 trials on CPU only" in note and "fuse: 1" in note
    assert fuse_note(_fused_sweep(tmp_path, fuse=2, gpu=1), configs) is None  # fusing on GPUs is the point
    unfused = _fused_sweep(tmp_path, fuse=1, gpu=0)
    plans = plan_sweep(unfused, None)
    singles = grid_trials(plans, workdir=str(tmp_path / "w"), refs=_refs(plans))
    assert len(singles) == 4 and fuse_note(unfused, singles) is None


def test_bundles_never_mix_precisions(tmp_path):
    # precision is a runtime field, so lineages of one config may differ in it (a sweep file
    # edited between runs, two sweeps); a bundle trains in one precision.
    sweep = _fused_sweep(tmp_path, fuse=4, gpu=1)
    plans = [replace(p, spec=p.spec.model_copy(update={"precision": "bf16" if k % 2 else "fp32"}))
             for k, p in enumerate(plan_sweep(sweep, None))]
    configs = grid_trials(plans, workdir=str(tmp_path / "w"), refs=_refs(plans))
    assert sorted(sorted(item.spec.precision for item in c.lineages) for c in configs) == [
        ["bf16", "bf16"], ["fp32", "fp32"]]


def _interrupting_fit(calls: list):
    """A stand-in for one Tune experiment that Ctrl-C interrupts."""

    def fit(*args, watch, **kwargs):
        calls.append(args)
        watch.interrupted = True
        return ()

    return fit


def test_an_interrupted_grid_chunk_is_the_last(tmp_path, monkeypatch):
    from orchestrator import launch
    from orchestrator.interrupts import SigintWatch

    sweep = load_sweep({"name": "cut", "workdir": str(tmp_path / "w"), "grid": {"seed": [0, 1, 2]}, "chunk_size": 1,
                        "model": "lenet_300_100", "dataset": "digits", "train": {"epochs": 1}, "prune": {"levels": 1}})
    calls: list = []
    monkeypatch.setattr(launch, "ensure_ray", lambda: None)
    monkeypatch.setattr(launch, "_fit_grid", _interrupting_fit(calls))
    plans = plan_sweep(sweep, None)
    watch = SigintWatch()
    launch.run_grid(sweep, plans, parents={p.lineage_id: "" for p in plans}, experiment_id="1", rev="x",
                    echo=lambda _: None, watch=watch)
    assert watch.interrupted and len(calls) == 1  # chunks 2 and 3 never start


def test_an_interrupted_search_chunk_is_the_last(tmp_path, monkeypatch, tiny_spec):
    from orchestrator import search_driver
    from orchestrator.interrupts import SigintWatch
    from orchestrator.plan import LineagePlan

    sweep = load_sweep({"name": "cut", "workdir": str(tmp_path / "w"), "chunk_size": 1, "model": "lenet_300_100",
                        "dataset": "digits", "train": {"epochs": 1}, "prune": {"levels": 1},
                        "search": {"space": {"seed": {"type": "choice", "values": [0, 1, 2, 3]}}, "num_samples": 3}})
    done = [LineagePlan(lineage_id(tiny_spec()), tiny_spec(), "done", 3, 3)]
    calls: list = []
    monkeypatch.setattr(search_driver, "_fit_search", _interrupting_fit(calls))
    monkeypatch.setattr(search_driver, "_proposed", lambda sweep, client: done)  # the chunk made progress
    watch = SigintWatch()
    failed, plans = search_driver._run_chunks(sweep, None, plans=[], failed=[], replan=False, trainable=None,
                                              ref=None, echo=lambda _: None, watch=watch)
    assert watch.interrupted and len(calls) == 1 and plans == done  # no second chunk; the plan read after it


def test_artifacts_go_under_the_workdir_with_a_sqlite_store_the_user_names(tmp_path, monkeypatch):
    """Never MLflow's default `./mlruns` in the directory the command runs in."""
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep({"name": "named", "workdir": str(tmp_path / "w"), "model": "lenet_300_100",
                        "dataset": "digits", "tracking_uri": f"sqlite:///{tmp_path / 'elsewhere.db'}"})
    client, experiment = prepare_tracking(sweep)
    location = client.get_experiment(experiment).artifact_location
    assert location == (tmp_path / "w" / "artifacts").as_uri() == sweep.artifact_location
    assert not (tmp_path / "mlruns").exists()
