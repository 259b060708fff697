"""Parent runs of lineages in MLflow: created once, found by tags, joined to each sweep."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from trainables import lineage_id
from trainables.tracking import KIND_LINEAGE, TAG, ensure_parent_run, ensure_parent_runs, search_all, tag_filter


def test_parent_runs_are_created_once_and_joined_to_every_sweep(tiny_spec, tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
    specs = [tiny_spec(seed=seed) for seed in range(3)]
    # one lineage already exists, recorded by another sweep one lineage at a time
    earlier = ensure_parent_run(client, experiment, specs[0], sweep="old", code_rev="r")
    first = ensure_parent_runs(client, experiment, specs, sweep="new", code_rev="r")
    assert set(first) == {lineage_id(s) for s in specs}
    assert first[lineage_id(specs[0])] == earlier
    again = ensure_parent_runs(client, experiment, specs, sweep="new", code_rev="r")
    assert again == first
    runs = search_all(client, tag_filter(kind=KIND_LINEAGE))
    assert len(runs) == 3  # no duplicates
    for run in runs:
        assert run.data.tags[f"{TAG}sweep.new"] == "1"
        assert run.data.params["seed"] == run.data.tags[f"{TAG}lineage_id"].rsplit("-s", 1)[1]
    shared = client.get_run(earlier)
    assert shared.data.tags[f"{TAG}sweep.old"] == "1" and shared.data.tags[f"{TAG}sweep.new"] == "1"
