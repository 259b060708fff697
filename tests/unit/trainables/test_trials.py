"""The trial protocol: each trial type crosses Tune as plain JSON values and reads back equal;
trials are named by lineage id."""
from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import pytest

from trainables import lineage_id
from trainables.tracking import TrackingRef
from trainables.trials import (
    SAMPLE_KEY, BundleTrial, LineageTrial, SearchTrial, grid_param_space, name_trial, read_trial, trial_lineages,
)

REF = TrackingRef(tracking_uri="sqlite:///m.db", experiment_id="1", parent_run_id="p", sweep="s", code_rev="r",
                  checkpoint_artifacts="full")
BASE = {"model": "lenet_300_100", "dataset": "digits", "train": {"lr": 0.05, "epochs": 1}}


def _lineage(tiny_spec, seed: int) -> LineageTrial:
    spec = tiny_spec(seed=seed)
    return LineageTrial(lineage_id(spec), spec, "/w", REF)


def _crossed(config: dict) -> dict:
    """What the trainable gets: Tune deep-copies a config and serialises it."""
    return json.loads(json.dumps(copy.deepcopy(config)))


def test_a_lineage_trial_round_trips_with_the_tracking_ref_as_its_fields(tiny_spec):
    trial = _lineage(tiny_spec, 3)
    config = trial.to_config()
    assert config == {"lineage": {"lineage_id": trial.lineage_id, "spec": trial.spec.model_dump(mode="json"),
                                  "workdir": "/w", "tracking": {
                                      "tracking_uri": "sqlite:///m.db", "experiment_id": "1", "parent_run_id": "p",
                                      "sweep": "s", "code_rev": "r", "checkpoint_artifacts": "full"}}}
    assert LineageTrial.from_config(_crossed(config)) == trial
    assert read_trial(_crossed(config)) == trial
    assert trial.lineage_ids == (trial.lineage_id,)
    del config["lineage"]["tracking"]["checkpoint_artifacts"]  # a trial configured before the field
    assert LineageTrial.from_config(_crossed(config)).tracking.checkpoint_artifacts == "weights"


def test_a_bundle_trial_round_trips(tiny_spec):
    bundle = BundleTrial(tuple(_lineage(tiny_spec, seed) for seed in range(3)))
    config = bundle.to_config()
    assert config == {"lineage": {"bundle": [item.to_config()["lineage"] for item in bundle.lineages]}}
    assert BundleTrial.from_config(_crossed(config)) == bundle
    assert read_trial(_crossed(config)) == bundle
    assert bundle.lineage_ids == tuple(item.lineage_id for item in bundle.lineages)
    assert bundle.workdir == "/w"
    with pytest.raises(ValueError, match="lineages: a bundle needs at least one lineage"):
        BundleTrial(())


def test_a_search_trial_round_trips_with_and_without_its_sample():
    space = SearchTrial(BASE, "/w", REF)
    assert space.to_config() == {"lineage": {"base": BASE, "workdir": "/w", "tracking": {
        "tracking_uri": "sqlite:///m.db", "experiment_id": "1", "parent_run_id": "p", "sweep": "s",
        "code_rev": "r", "checkpoint_artifacts": "full"}}}
    assert SearchTrial.from_config(_crossed(space.to_config())) == space
    sampled = SearchTrial(BASE, "/w", REF, {"train.lr": 0.02})
    config = sampled.to_config()
    assert config[SAMPLE_KEY] == {"train.lr": 0.02} and config["lineage"] == space.to_config()["lineage"]
    assert read_trial(_crossed(config)) == sampled
    lineage = sampled.lineage()
    assert lineage.spec.train.lr == 0.02 and lineage.spec.train.epochs == 1
    assert (lineage.lineage_id, lineage.workdir, lineage.tracking) == (lineage_id(lineage.spec), "/w", REF)
    assert sampled.lineage_ids == ()


def test_a_grid_crosses_tunes_variant_generator(tiny_spec):
    from ray import tune
    from ray.tune.search.variant_generator import generate_variants

    trials = [_lineage(tiny_spec, 0), BundleTrial((_lineage(tiny_spec, 1), _lineage(tiny_spec, 2)))]
    space = grid_param_space(trials, grid_search=tune.grid_search)
    configs = [config for _, config in generate_variants(copy.deepcopy(space))]
    assert sorted((read_trial(_crossed(c)) for c in configs), key=lambda t: t.lineage_ids) == trials


def test_trials_are_named_by_lineage_id(tiny_spec):
    single, first, second = (_lineage(tiny_spec, seed) for seed in range(3))
    assert name_trial(single.to_config(), trial_id="t1") == single.lineage_id
    bundle = BundleTrial((first, second))
    assert name_trial(bundle.to_config(), trial_id="t1") == f"{first.lineage_id}-x2"
    sampled = SearchTrial(BASE, "/w", REF, {"train.lr": 0.02})
    assert name_trial(sampled.to_config(), trial_id="t1") == sampled.lineage().lineage_id
    invalid = SearchTrial(BASE, "/w", REF, {"train.lr": -1.0})
    assert name_trial(invalid.to_config(), trial_id="t1") == "t1"


def test_the_lineages_a_config_names(tiny_spec):
    single, first, second = (_lineage(tiny_spec, seed) for seed in range(3))
    assert trial_lineages(single.to_config()) == (single.lineage_id,)
    assert trial_lineages(BundleTrial((first, second)).to_config()) == (first.lineage_id, second.lineage_id)
    assert trial_lineages(SearchTrial(BASE, "/w", REF, {"train.lr": 0.02}).to_config()) == ()
    assert trial_lineages(None) == () and trial_lineages({}) == ()


def test_configs_of_no_trial_are_refused(tiny_spec):
    with pytest.raises(ValueError, match="no trial config"):
        read_trial({"sample": {}})
    expected = r"keys \['spek'\] name no trial; expected one of \['base', 'bundle', 'spec'\]"
    with pytest.raises(ValueError, match=expected):
        read_trial({"lineage": {"spek": {}}})
    with pytest.raises(ValueError, match="a LineageTrial config, not a BundleTrial one"):
        BundleTrial.from_config(_lineage(tiny_spec, 0).to_config())


def test_the_protocol_does_not_import_ray():
    source = Path(__file__).parents[3] / "trainables" / "trials.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not {name for name in imported if name == "ray" or name.startswith("ray.")}
