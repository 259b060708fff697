"""Lineages a search's scheduler stopped early: told apart from lineages that ran to their end
(their planned last level, or where their own stopping rule ended them), and recorded on the
lineage's parent run in a real MLflow store."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from orchestrator.plan import searched_lineages
from orchestrator.progress import ProgressCallback
from orchestrator.specs import load_sweep
from orchestrator.stops import StopRecorder, stopped_after
from trainables.checkpoints import LineageCheckpoints
from trainables.ids import lineage_id
from trainables.specs import LineageSpec
from trainables.tracking import ensure_experiment, ensure_parent_run, stopped_tag


def _result(level: int, n_levels: int = 4, **extra) -> dict:
    return {"lineage_id": "c1-s0", "level": level, "n_levels": n_levels, "kind": "level", **extra}


def test_a_trial_short_of_its_last_level_was_stopped(tmp_path):
    workdir = str(tmp_path)
    assert stopped_after(_result(3), workdir) is None  # ran to its planned last level
    assert stopped_after(_result(1), workdir) == 1
    assert stopped_after(_result(1, kind="epoch", training_level=2), workdir) == 1
    assert stopped_after(None, workdir) is None and stopped_after({"level": 1}, workdir) is None


def test_a_lineage_ended_by_its_own_stopping_rule_was_not_stopped(tmp_path):
    LineageCheckpoints(tmp_path, "c1-s0").record_stop(2, connected_fraction=0.1)
    assert stopped_after(_result(2), str(tmp_path)) is None
    assert stopped_after(_result(1), str(tmp_path)) == 1


def _search_sweep(tmp_path) -> dict:
    return {"name": "hunt", "workdir": str(tmp_path / "w"), "model": "lenet_300_100", "dataset": "digits",
            "train": {"lr": 0.05, "epochs": 1}, "prune": {"rate": 0.2, "levels": 3},
            "search": {"space": {"train.lr": {"type": "loguniform", "low": 0.01, "high": 0.2}},
                       "num_samples": 2}}


def test_the_recorder_tags_and_closes_the_parent_run_and_the_plan_reads_it(tmp_path):
    sweep = load_sweep(_search_sweep(tmp_path))
    uri = sweep.resolved_tracking_uri
    Path(sweep.workdir).mkdir(parents=True)
    client = MlflowClient(uri)
    experiment = ensure_experiment(client, "hunt")
    specs = [LineageSpec.model_validate({**sweep.base, "train": {"lr": lr, "epochs": 1}}) for lr in (0.02, 0.1)]
    runs = [ensure_parent_run(client, spec, experiment_id=experiment, sweep="hunt", code_rev="x") for spec in specs]
    lines: list[str] = []
    progress = ProgressCallback(lines.append, expected=2, workdir=str(Path(sweep.workdir)))
    recorder = StopRecorder(uri, sweep="hunt", workdir=str(Path(sweep.workdir)))
    for spec, level in zip(specs, (1, 3)):
        trial = SimpleNamespace(trial_id=lineage_id(spec), custom_dirname=lineage_id(spec), local_path="/x",
                                last_result={"lineage_id": lineage_id(spec), "level": level, "n_levels": 4,
                                             "kind": "level", "sparsity": 0.2, "test_acc": 0.5, "wall_s": 1.0})
        progress.on_trial_result(0, [], trial, trial.last_result)
        recorder.on_trial_complete(0, [], trial)
        progress.on_trial_complete(0, [], trial)
    stopped, finished = (client.get_run(run_id) for run_id in runs)
    assert stopped.data.tags[stopped_tag("hunt")] == "1" and stopped.info.status == "FINISHED"
    assert stopped_tag("hunt") not in finished.data.tags  # ran to its end: left to the trial
    assert lines[-3].endswith(f"{lineage_id(specs[0])} stopped by the scheduler after L01")
    assert lines[-1].endswith(f"{lineage_id(specs[1])} finished")
    assert searched_lineages(sweep, client)[1] == {lineage_id(specs[0]): 1}
