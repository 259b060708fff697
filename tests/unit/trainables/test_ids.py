"""Identity: same spec, same ids; identity fields change ids; runtime fields and defaults do not."""
from __future__ import annotations

import pytest

from trainables import LineageSpec
from trainables.ids import (
    canonical, checkpoint_id, config_id, identity, lineage_id, parse_checkpoint_id, parse_lineage_id,
)

BASE = {"model": "lenet_300_100", "dataset": "digits"}


def test_same_spec_same_ids():
    a = LineageSpec.model_validate({**BASE, "seed": 3})
    b = LineageSpec.model_validate({"seed": 3, "dataset": "digits", "model": "lenet_300_100"})
    assert lineage_id(a) == lineage_id(b)
    assert canonical(a) == canonical(b)


@pytest.mark.parametrize("change", [
    {"model": "fcn"},
    {"dataset": "mnist1d"},
    {"train": {"lr": 0.01}},
    {"train": {"epochs": 3}},
    {"prune": {"rate": 0.3}},
    {"prune": {"rewind": "lr"}},
    {"prune": {"scope": "layerwise"}},
    {"prune": {"exclude": ["bias", "bn", "output"]}},
    {"model_options": {"widths": [64, 32]}, "model": "fcn"},
])
def test_identity_field_changes_config_id(change):
    assert config_id(LineageSpec.model_validate({**BASE, **change})) != config_id(LineageSpec.model_validate(BASE))


def test_seed_changes_lineage_not_config():
    a, b = (LineageSpec.model_validate({**BASE, "seed": s}) for s in (0, 1))
    assert config_id(a) == config_id(b)
    assert lineage_id(a) != lineage_id(b)
    assert lineage_id(b).endswith("-s1")


@pytest.mark.parametrize("runtime", [
    {"device": "cuda"}, {"data_root": "/data"}, {"download": True}, {"compile": True}, {"fuse": 8},
    {"num_workers": 4}, {"checkpoint_every_epochs": 5},
])
def test_runtime_fields_do_not_enter_ids(runtime):
    assert lineage_id(LineageSpec.model_validate({**BASE, **runtime})) == lineage_id(LineageSpec.model_validate(BASE))


def test_fields_at_their_default_are_omitted():
    explicit = LineageSpec.model_validate({
        **BASE, "seed": 0, "train": {"optimizer": "sgd", "lr": 0.1}, "prune": {"schedule": "imp", "rate": 0.2},
    })
    assert lineage_id(explicit) == lineage_id(LineageSpec.model_validate(BASE))
    assert identity(explicit) == {"schema_version": 1, "model": "lenet_300_100", "dataset": "digits"}


def test_canonical_form_is_sorted_compact_json():
    spec = LineageSpec.model_validate({**BASE, "train": {"lr": 0.05, "epochs": 3}})
    assert canonical(spec) == (
        '{"dataset":"digits","model":"lenet_300_100","schema_version":1,"train":{"epochs":3,"lr":0.05}}'
    )


# Pinned: a change here renames every stored lineage. Change only with a schema_version bump.
GOLDEN = [
    (BASE, "c0696a4317a26-s0"),
    ({**BASE, "seed": 7, "train": {"lr": 0.05, "batch_size": 64, "epochs": 20},
      "prune": {"levels": 4, "exclude": ["bias"]}}, "c9bcd0ac2d1dc-s7"),
    ({"model": "fcn", "dataset": "mnist1d", "prune": {"scope": "layerwise", "rewind": "step", "rewind_step": 100}},
     "c6040db0f1fa2-s0"),
]


@pytest.mark.parametrize("fields,expected", GOLDEN)
def test_golden_ids(fields, expected):
    assert lineage_id(LineageSpec.model_validate(fields)) == expected


def test_checkpoint_ids():
    assert checkpoint_id("cabc-s1", 3) == "cabc-s1/L03"
    assert checkpoint_id("cabc-s1", 0, step=500) == "cabc-s1/L00/it500"
    assert parse_checkpoint_id("cabc-s1/L03") == ("cabc-s1", 3)
    with pytest.raises(ValueError, match="not a level checkpoint id"):
        parse_checkpoint_id("cabc-s1")


@pytest.mark.parametrize("fields,expected", GOLDEN)
def test_lineage_ids_parse_into_config_id_and_seed(fields, expected):
    spec = LineageSpec.model_validate(fields)
    assert parse_lineage_id(expected) == (config_id(spec), spec.seed)
    assert parse_lineage_id("c0696a4317a26-s120") == ("c0696a4317a26", 120)


@pytest.mark.parametrize("bad", [
    "c0696a4317a26", "c0696a4317a26-s", "c0696a4317a26-s-1", "c0696a4317a26-s01", "c0696a4317a2-s0",
    "c0696a4317a26f-s0", "C0696A4317A26-s0", "c0696a4317a26-s0/L00", "cA-s0", "",
])
def test_malformed_lineage_ids_are_refused_with_the_expected_form(bad):
    with pytest.raises(ValueError, match=r"not a lineage id: .*expected 'c<12 hex>-s<seed>'"):
        parse_lineage_id(bad)
