"""A level run's checkpoint artifacts (`checkpoint_artifacts`): what lands in MLflow's artifact
store per policy, nothing twice on one disk, and weights a user can load into the model."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from trainables import LineageSpec, build_model, lineage_id, load_checkpoint, load_dataset, run_lineage
from trainables.artifacts import same_store
from trainables.tracking import (
    CHECKPOINT_URI_TAG, TrackingRef, ensure_parent_run, find_level_runs, lineage_tags, log_level,
)

SPEC = {"model": "lenet_300_100", "dataset": "digits", "train": {"lr": 0.05, "batch_size": 128, "epochs": 1},
        "prune": {"rate": 0.2, "levels": 1, "exclude": ["bias"]}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, spec, levels, client): one tiny lineage, trained once for every test here, and
    an MLflow store in its workdir as a sweep has it by default."""
    workdir = tmp_path_factory.mktemp("w")
    spec = LineageSpec.model_validate(SPEC)
    levels = run_lineage(spec, workdir=workdir).levels
    return workdir, spec, levels, MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


def _log(trained, policy: str, *, name: str | None = None) -> tuple[Path, dict]:
    """Log every level under `policy` to an experiment of its own, its artifacts under
    <workdir>/artifacts; returns (artifact root, level -> run)."""
    workdir, spec, levels, client = trained
    name = name or policy
    root = workdir / "artifacts" / name
    experiment = client.create_experiment(name, artifact_location=root.as_uri())
    ref = TrackingRef(client.tracking_uri, experiment, ensure_parent_run(
        client, spec, experiment_id=experiment, sweep=name, code_rev="r"), name, "r", checkpoint_artifacts=policy)
    for result in levels:
        log_level(client, result, ref=ref, tags=lineage_tags(spec, "r"))
    return root, find_level_runs(client, levels[0].lineage_id, experiment_ids=[experiment])


def _digests(folder: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("policy, logged", [
    ("weights", ["checkpoint/checkpoint.json"]),
    ("full", ["checkpoint/metrics.json", "checkpoint/spec.json", "checkpoint/state.pt"]),
    ("none", []),
])
def test_each_policy_logs_its_artifacts_and_only_full_copies_a_level_on_its_disk(trained, policy, logged):
    workdir, _, levels, client = trained
    root, runs = _log(trained, policy)
    lineage_folder = workdir / "lineages" / levels[0].lineage_id
    for result in levels:
        run = runs[result.level]
        assert run.data.tags[CHECKPOINT_URI_TAG] == result.checkpoint_dir
        listed = client.list_artifacts(run.info.run_id, "checkpoint") if logged else []
        assert sorted(a.path for a in listed) == logged
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == (["checkpoint"] if logged else [])
    twice = _digests(lineage_folder) & _digests(root) if root.exists() else set()
    if policy == "full":  # asked for: the level folder, even on the disk that holds it
        assert twice == {d for r in levels for d in _digests(Path(r.checkpoint_dir))}
    else:
        assert twice == set()
    if policy == "weights":
        run_id = runs[1].info.run_id
        reference = json.loads(Path(client.download_artifacts(run_id, "checkpoint/checkpoint.json",
                                                               str(workdir / "down"))).read_text())
        assert reference["uri"] == levels[1].checkpoint_dir
        assert reference["key"] == f"lineages/{levels[1].lineage_id}/L01"
        loaded = load_checkpoint(reference["uri"])
        level_metrics = json.loads((Path(levels[1].checkpoint_dir) / "metrics.json").read_text())
        assert reference["state_sha256"] == level_metrics["state_sha256"] and loaded.level == 1


def test_weights_on_another_store_load_into_the_model(trained, monkeypatch):
    """An artifact store elsewhere (a tracking server's bucket): the weights and masks travel,
    compact, and load with weights_only=True into the model the spec builds."""
    monkeypatch.setattr("trainables.artifacts.same_store", lambda artifact_uri, location: False)
    workdir, spec, levels, client = trained
    _, runs = _log(trained, "weights", name="weights-elsewhere")
    run_id = runs[1].info.run_id
    names = sorted(a.path for a in client.list_artifacts(run_id, "checkpoint"))
    assert names == [f"checkpoint/{n}" for n in ("checkpoint.json", "metrics.json", "spec.json", "weights.pt")]
    folder = Path(client.download_artifacts(run_id, "checkpoint", str(workdir / "down-elsewhere")))
    state = Path(levels[1].checkpoint_dir, "state.pt").stat().st_size
    assert (folder / "weights.pt").stat().st_size < state  # no optimizer or RNG state
    weights = torch.load(folder / "weights.pt", weights_only=True)
    info = load_dataset(spec.dataset, options=spec.dataset_options).info
    model = build_model(spec.model, input_shape=info.input_shape, num_classes=info.num_classes,
                        options=spec.model_options)
    model.load_state_dict(weights["model"])
    level = load_checkpoint(levels[1].checkpoint_dir)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, level.model[name], rtol=0, atol=0)
    assert weights["masks"].keys() == level.masks.keys()
    assert all(torch.equal(weights["masks"][k], level.masks[k]) for k in level.masks)
    assert json.loads((folder / "spec.json").read_text())["spec"]["model"] == spec.model


def test_a_fused_bundle_logs_what_its_sweep_asks_for(trained, tmp_path, monkeypatch):
    """The policy crosses the Tune trial config (plain JSON) into every lineage of a bundle."""
    from trainables import tune_entry
    from trainables.trials import BundleTrial, LineageTrial

    _, _, _, client = trained
    experiment = client.create_experiment("fused", artifact_location=(tmp_path / "artifacts").as_uri())
    specs = [LineageSpec.model_validate({**SPEC, "seed": seed}) for seed in (1, 2)]
    bundle = BundleTrial(tuple(
        LineageTrial(lineage_id(spec), spec, str(tmp_path / "w"), TrackingRef(
            client.tracking_uri, experiment,
            ensure_parent_run(client, spec, experiment_id=experiment, sweep="fused", code_rev="r"), "fused", "r",
            checkpoint_artifacts="none"))
        for spec in specs))
    monkeypatch.setattr(tune_entry.tune, "report", lambda *args, **kwargs: None)  # no Tune session here
    tune_entry.lineage_trainable(json.loads(json.dumps(bundle.to_config())))
    runs = [run for spec in specs
            for run in find_level_runs(client, lineage_id(spec), experiment_ids=[experiment]).values()]
    assert len(runs) == 4
    for run in runs:
        assert run.data.tags[CHECKPOINT_URI_TAG].endswith("lineages/" + run.data.tags["impsweep.checkpoint_id"])
        assert client.list_artifacts(run.info.run_id) == []
    assert not (tmp_path / "artifacts").exists()


def test_the_store_of_artifacts_is_the_level_store_on_its_disk_or_bucket(tmp_path):
    assert same_store((tmp_path / "artifacts" / "1").as_uri(), str(tmp_path / "lineages" / "x" / "L00"))
    assert same_store(str(tmp_path / "artifacts"), str(tmp_path / "lineages"))
    assert same_store("s3://bucket/w/artifacts/1/abc", "s3://bucket/w/lineages/x/L00")
    assert not same_store("s3://other/artifacts", "s3://bucket/w/lineages/x/L00")
    assert not same_store(tmp_path.as_uri(), "s3://bucket/w/lineages/x/L00")
    assert not same_store("s3://bucket/artifacts", str(tmp_path))
    # a proxied artifact store: where it lands is the server's business
    assert not same_store("mlflow-artifacts:/1/abc/artifacts", str(tmp_path))
    shm = Path("/dev/shm")
    if shm.is_dir() and shm.stat().st_dev != tmp_path.stat().st_dev:
        assert not same_store(shm.as_uri(), str(tmp_path))


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match=r"checkpoint_artifacts: unknown policy 'all'; expected one of "
                                         r"\['weights', 'full', 'none'\]"):
        TrackingRef("sqlite:///m.db", "1", "p", "s", "r", checkpoint_artifacts="all")
