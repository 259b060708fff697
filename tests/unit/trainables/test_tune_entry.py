"""The Tune trainable's MLflow recorder: a lineage's level runs are read under its lock."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from trainables import lineage_id, run_lineage
from trainables.tracking import (
    KIND_LEVEL, TrackingRef, ensure_parent_run, lineage_tags, log_level, search_all, tag_filter,
)


def test_a_trial_finds_the_level_runs_logged_before_it_held_the_lineage(tiny_spec, tmp_path, monkeypatch):
    """Two runs of one sweep: both trials of a lineage start, one trains it under the lineage's
    lock and logs its levels, the other then reads them back; it must log no second run."""
    from trainables import tune_entry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
    spec = tiny_spec(prune={"levels": 1})
    ref = TrackingRef(uri, experiment, ensure_parent_run(client, spec, experiment_id=experiment, sweep="s",
                                                         code_rev="r"), "s", "r")
    monkeypatch.setattr(tune_entry.tune, "report", lambda *args, **kwargs: None)  # no Tune session here
    second = tune_entry._Recorder(spec, ref)  # its trial started; the lineage's lock is taken
    for result in run_lineage(spec, workdir=tmp_path / "w").levels:  # by the first, which logs
        log_level(client, result, ref=ref, tags=lineage_tags(spec, "r"))
    for result in run_lineage(spec, workdir=tmp_path / "w").levels:  # the second reads back
        assert result.resumed
        second.level(result)
    runs = search_all(client, tag_filter(kind=KIND_LEVEL))
    assert sorted(r.data.tags["impsweep.checkpoint_id"] for r in runs) == [
        f"{lineage_id(spec)}/L0{level}" for level in range(2)]
