"""Parent runs of lineages in MLflow: created once, found by tags, joined to each sweep."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from trainables import lineage_id
from trainables.ids import parse_lineage_id
from trainables.tracking import GIT_COMMIT_TAG, KIND_LINEAGE, TAG, ensure_parent_run, ensure_parent_runs, search_all, tag_filter


def test_parent_runs_are_created_once_and_joined_to_every_sweep(tiny_spec, tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
    specs = [tiny_spec(seed=seed) for seed in range(3)]
    # one lineage already exists, recorded by another sweep one lineage at a time
    earlier = ensure_parent_run(client, specs[0], experiment_id=experiment, sweep="old", code_rev="r")
    rev = f"{'0123456789abcdef' * 2}01234567-dirty"  # code_rev of a checkout with changes
    first = ensure_parent_runs(client, specs, experiment_id=experiment, sweep="new", code_rev=rev)
    assert set(first) == {lineage_id(s) for s in specs}
    assert first[lineage_id(specs[0])] == earlier
    again = ensure_parent_runs(client, specs, experiment_id=experiment, sweep="new", code_rev=rev)
    assert again == first
    runs = search_all(client, tag_filter(kind=KIND_LINEAGE))
    assert len(runs) == 3  # no duplicates
    for run in runs:
        assert run.data.tags[f"{TAG}sweep.new"] == "1"
        assert run.data.params["seed"] == str(parse_lineage_id(run.data.tags[f"{TAG}lineage_id"])[1])
    created = [client.get_run(first[lineage_id(s)]).data.tags for s in specs[1:]]
    assert all(t[GIT_COMMIT_TAG] == rev[:40] and t[f"{TAG}code_rev"] == rev for t in created)  # MLflow's source tag
    shared = client.get_run(earlier)
    assert shared.data.tags[f"{TAG}sweep.old"] == "1" and shared.data.tags[f"{TAG}sweep.new"] == "1"


def test_level_runs_say_which_precision_trained_them(tiny_spec, tmp_path):
    from trainables import run_lineage
    from trainables.tracking import TrackingRef, find_level_runs, lineage_tags, log_level

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
    spec = tiny_spec(precision="bf16", prune={"levels": 1})
    parent = ensure_parent_run(client, spec, experiment_id=experiment, sweep="s", code_rev="r")
    ref = TrackingRef(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment_id=experiment,
                      parent_run_id=parent, sweep="s", code_rev="r")
    for result in run_lineage(spec, workdir=tmp_path / "w").levels:
        log_level(client, result, ref=ref, tags=lineage_tags(spec, "r"))
    levels = find_level_runs(client, lineage_id(spec), experiment_ids=[experiment])
    assert sorted(levels) == [0, 1]
    assert {run.data.tags[f"{TAG}precision"] for run in levels.values()} == {"bf16"}
