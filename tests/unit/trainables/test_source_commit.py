"""A lineage's parent run names its code's commit in MLflow's standard source tag too."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from trainables.tracking import GIT_COMMIT_TAG, TAG, ensure_parent_run

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_parent_runs_carry_the_git_commit_of_a_revision(tiny_spec, tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
    revs = {0: SHA, 1: f"{SHA}-dirty", 2: "impsweep-0.1.0"}
    for seed, rev in revs.items():
        tags = client.get_run(ensure_parent_run(client, tiny_spec(seed=seed), experiment_id=experiment,
                                                sweep="s", code_rev=rev)).data.tags
        assert tags[f"{TAG}code_rev"] == rev
        assert tags.get(GIT_COMMIT_TAG) == (None if seed == 2 else SHA)
