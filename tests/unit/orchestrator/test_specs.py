"""Sweep files: validation (every error at once), overrides, smoke, grid expansion."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import demo_sweep_text, main
from orchestrator.specs import SpecError, load_sweep, parse_override
from trainables.ids import lineage_id

BASE = {
    "name": "t", "workdir": "runs/t", "model": "lenet_300_100", "dataset": "digits",
    "train": {"epochs": 2}, "prune": {"levels": 2},
}


def test_grid_expands_in_order_with_dotted_keys():
    sweep = load_sweep({**BASE, "grid": {"seed": [0, 1], "prune.rewind": ["init", "lr"]}})
    assert [(s.seed, s.prune.rewind) for s in sweep.lineages] == [(0, "init"), (0, "lr"), (1, "init"), (1, "lr")]
    assert all(s.prune.levels == 2 for s in sweep.lineages)


def test_grid_points_that_differ_only_at_runtime_collapse():
    sweep = load_sweep({**BASE, "grid": {"device": ["cpu", "auto"], "seed": [3]}})
    assert len(sweep.lineages) == 1


def test_every_error_at_once_with_path_value_and_options():
    raw = {**BASE, "name": "bad name", "resources": {"cpu": 0, "gpus": 1}, "dataset": "digitz",
           "train": {"optimizer": "lion"}, "prune": {"scop": "global"}, "colour": "blue",
           "grid": {"seed": 5, "model": ["lenet_9"]}, "analysis": {"measures": ["ckaa"]}}
    with pytest.raises(SpecError) as info:
        load_sweep(raw)
    text = "\n".join(info.value.errors)
    assert len(info.value.errors) >= 9
    for expected in [
        "name: String should match pattern", "resources.cpu: Input should be greater than 0 (got 0)",
        "resources.gpus: Extra inputs are not permitted; expected one of ['cpu', 'gpu']",
        "dataset: unknown dataset 'digitz'; expected one of [", "'digits'",
        "train.optimizer: Input should be 'sgd' or 'adam' (got 'lion')",
        "prune.scop: Extra inputs are not permitted; expected one of [", "'scope'",
        "colour: Extra inputs are not permitted", "grid.seed: expected a non-empty list of values (got 5)",
        "grid.model: unknown model 'lenet_9'", "analysis.measures: unknown measure 'ckaa'",
    ]:
        assert expected in text


def test_overrides_apply_before_validation():
    sweep = load_sweep({**BASE}, overrides=["train.epochs=5", "grid.seed=[0, 1, 2]", "prune.rewind=lr"])
    assert [s.train.epochs for s in sweep.lineages] == [5, 5, 5]
    assert [s.seed for s in sweep.lineages] == [0, 1, 2]
    assert sweep.lineages[0].prune.rewind == "lr"
    with pytest.raises(SpecError, match="train.epochs: Input should be a valid integer"):
        load_sweep({**BASE}, overrides=["train.epochs=many"])


@pytest.mark.parametrize("text", ["train.epochs", "=3", "a..b=1"])
def test_malformed_override(text):
    with pytest.raises(SpecError, match="expected key=value"):
        parse_override(text)


def test_smoke_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, "train": {"epochs": 50}, "smoke": {"train.epochs": 1, "grid.seed": [9]}}))
    assert load_sweep(path).lineages[0].train.epochs == 50
    smoke = load_sweep(path, smoke=True)
    assert [(s.train.epochs, s.seed) for s in smoke.lineages] == [(1, 9)]
    no_smoke = tmp_path / "n.yaml"
    no_smoke.write_text(yaml.safe_dump(BASE))
    with pytest.raises(SpecError, match="no `smoke:` mapping"):
        load_sweep(no_smoke, smoke=True)


def test_bad_file_exits_2_and_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "w"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "workdir": str(workdir), "train": {"lr": -1}}))
    assert main(["run", str(path)]) == 2
    assert "train.lr: Input should be greater than 0 (got -1)" in capsys.readouterr().err
    assert not workdir.exists()
    assert main(["status", str(tmp_path / "missing.yaml")]) == 2
    path.write_text("- just\n- a list\n")
    assert main(["run", str(path)]) == 2


def test_demo_sweep_is_the_documented_one():
    raw = yaml.safe_load(demo_sweep_text())
    sweep = load_sweep(raw)
    assert [s.seed for s in sweep.lineages] == [0, 1]
    spec = sweep.lineages[0]
    assert (spec.model, spec.dataset, spec.prune.rate, spec.prune.levels, spec.prune.rewind) == (
        "lenet_300_100", "digits", 0.2, 4, "init")
    assert sweep.max_concurrent == 2
    assert sweep.analysis.layers == "same" and sweep.analysis.scope == "all"
    assert lineage_id(spec) == "c9bcd0ac2d1dc-s0"


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[3].joinpath("sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_sweep_files_validate(path):
    load_sweep(path)
    if "smoke" in yaml.safe_load(path.read_text()):
        load_sweep(path, smoke=True)


@pytest.mark.parametrize("grid, expected", [
    ([{"seed": [0, 1]}], "grid: expected a mapping of dotted lineage field -> list of values (got [{'seed': [0, 1]}])"),
    (None, "grid: expected a mapping of dotted lineage field -> list of values (got None)"),
    ({1: [2]}, "grid: axis names must be dotted lineage fields, e.g. seed or train.lr (got 1)"),
])
def test_a_grid_that_is_not_a_mapping_of_named_axes_is_an_error(grid, expected):
    with pytest.raises(SpecError) as info:
        load_sweep({**BASE, "grid": grid, "train": {"lr": -1}})
    assert expected in info.value.errors
    assert any(e.startswith("train.lr:") for e in info.value.errors)  # still every error at once


def test_smoke_keys_must_be_dotted_fields(tmp_path):
    with pytest.raises(SpecError, match=r"smoke: override keys must be dotted fields, e.g. train.epochs \(got 7\)"):
        load_sweep({**BASE, "smoke": {7: 1}}, smoke=True)


def test_loose_yaml_values_are_refused_all_at_once(tmp_path):
    path = tmp_path / "loose.yaml"
    path.write_text("name: t\nworkdir: w\nmodel: lenet_300_100\ndataset: digits\n"
                    "train: {epochs: '1', lr: yes, batch_size: true, momentum: .inf, warmup_epochs: 1e23}\n"
                    "prune: {levels: 1e23}\nresources: {cpu: '2'}\nmax_concurrent: 2.0\n"
                    "analysis: {probe_size: 1e3, measures: [linear_cka]}\n")
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    assert sorted(info.value.errors) == [
        "analysis.probe_size: Input should be a valid integer (got 1000.0)",
        "max_concurrent: Input should be a valid integer (got 2.0)",
        "prune.levels: Input should be a valid integer (got 1e+23)",
        "resources.cpu: Input should be a valid number (got '2')",
        "train.batch_size: Input should be a valid integer (got True)",
        "train.epochs: Input should be a valid integer (got '1')",
        "train.lr: Input should be a valid number (got True)",
        "train.momentum: Input should be a finite number (got inf)",
    ]


def test_overrides_are_as_strict_as_the_file_and_ints_may_stand_for_floats():
    with pytest.raises(SpecError, match=r"train.epochs: Input should be a valid integer \(got '2'\)"):
        load_sweep({**BASE}, overrides=["train.epochs='2'"])
    with pytest.raises(SpecError, match=r"seed: integers must lie within \+-2147483647 \(got 4294967296\)"):
        load_sweep({**BASE}, overrides=["seed=4294967296"])
    sweep = load_sweep({**BASE, "search": {"space": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1}}}},
                       overrides=["train.lr=1", "resources.cpu=2"])
    assert sweep.base["train"]["lr"] == 1 and sweep.resources.cpu == 2.0
    assert sweep.search.space["train.lr"].high == 1.0


def test_ray_storage_is_under_the_workdir_unless_storage_path_names_another():
    assert load_sweep({**BASE, "workdir": "s3://bucket/w", "tracking_uri": "http://127.0.0.1:5000"}
                      ).resolved_storage_path == "s3://bucket/w/ray"
    assert load_sweep({**BASE, "storage_path": "s3://bucket/tune"}).resolved_storage_path == "s3://bucket/tune"


def test_checkpoint_artifacts_defaults_to_weights_and_a_bad_value_exits_2(tmp_path, capsys):
    from typing import get_args

    from orchestrator.specs import SweepSpec
    from trainables.artifacts import CHECKPOINT_ARTIFACTS, DEFAULT_CHECKPOINT_ARTIFACTS

    field = SweepSpec.model_fields["checkpoint_artifacts"]  # the sweep offers what log_level knows
    assert get_args(field.annotation) == CHECKPOINT_ARTIFACTS and field.default == DEFAULT_CHECKPOINT_ARTIFACTS
    assert load_sweep(BASE).checkpoint_artifacts == "weights"
    assert load_sweep({**BASE, "checkpoint_artifacts": "none"}).checkpoint_artifacts == "none"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "workdir": str(tmp_path / "w"), "checkpoint_artifacts": "all"}))
    assert main(["run", str(path)]) == 2
    assert "checkpoint_artifacts: Input should be 'weights', 'full' or 'none' (got 'all')" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
