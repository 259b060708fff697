"""The lineage spec is strict: no loose coercions, finite floats, bounded ints; JSON round trips."""
from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from trainables import LineageSpec
from trainables.ids import lineage_id
from trainables.specs import MAX_INT

BASE = {"model": "lenet_300_100", "dataset": "digits"}


@pytest.mark.parametrize("field, value", [
    ("train.epochs", "1"), ("train.epochs", 1.0), ("train.epochs", 1e23), ("train.epochs", MAX_INT + 1),
    ("train.batch_size", True), ("train.lr", True), ("train.lr", "0.1"), ("train.lr", math.inf),
    ("train.lr", math.nan), ("train.nesterov", "true"), ("train.nesterov", 1), ("seed", 2**40),
    ("train.milestones", ["3"]), ("train.milestones", [MAX_INT + 1]), ("prune.targets", ["0.5"]),
    ("prune.exclude", [1]), ("prune.layer_rates", {"fc1.weight": "0.5"}), ("prune.rate", -math.inf),
    ("download", "yes"), ("report_every_s", math.inf), ("model", 5),
])
def test_loose_values_are_refused_naming_the_field(field, value):
    *parents, leaf = field.split(".")
    raw = {**BASE, **({parents[0]: {leaf: value}} if parents else {leaf: value})}
    if field.startswith("prune.targets"):
        raw["prune"]["schedule"] = "oneshot"
    if field.startswith("train.milestones"):
        raw["train"]["lr_schedule"] = "multistep"
    with pytest.raises(ValidationError) as info:
        LineageSpec.model_validate(raw)
    locs = {".".join(str(p) for p in e["loc"][:2]) for e in info.value.errors()}
    assert ".".join(field.split(".")[:2]) in locs or field in locs, info.value.errors()


def test_ints_stand_in_for_floats_and_keep_ids():
    as_int = LineageSpec.model_validate({**BASE, "train": {"lr": 1, "weight_decay": 0}})
    as_float = LineageSpec.model_validate({**BASE, "train": {"lr": 1.0, "weight_decay": 0.0}})
    assert as_int == as_float and isinstance(as_int.train.lr, float)
    assert lineage_id(as_int) == lineage_id(as_float)


def test_json_round_trips_of_valid_specs_validate_again():
    spec = LineageSpec.model_validate({
        **BASE, "seed": MAX_INT,
        "train": {"lr": 0.05, "lr_schedule": "multistep", "milestones": [2, 4], "warmup_epochs": 1},
        "prune": {"schedule": "oneshot", "targets": [0.5, 0.8], "exclude": ["bias", "fc3.*"],
                  "layer_rates": {"output": 0.1}},
        "report_every_s": None,
    })
    dumped = spec.model_dump(mode="json")
    assert LineageSpec.model_validate(dumped) == spec
    assert LineageSpec.model_validate(json.loads(json.dumps(dumped))) == spec
    assert LineageSpec.model_validate_json(spec.model_dump_json()) == spec
