"""Reading a searched lineage back from its MLflow params, as strictly as from a sweep file."""
from __future__ import annotations

from orchestrator.plan import _spec_from_params
from orchestrator.specs import load_sweep
from trainables.ids import lineage_id
from trainables.specs import LineageSpec
from trainables.tracking import flatten


def test_a_searched_lineage_is_read_back_from_its_params():
    sweep = load_sweep({"name": "t", "workdir": "w", "model": "lenet_300_100", "dataset": "digits", "search": {
        "space": {"train.nesterov": {"type": "choice", "values": [True, False]},
                  "train.lr": {"type": "loguniform", "low": 0.01, "high": 0.1},
                  "train.epochs": {"type": "int", "low": 1, "high": 3},
                  "train.optimizer": {"type": "choice", "values": ["sgd", "adam"]}}}})
    train = {"nesterov": True, "lr": 0.05, "epochs": 2, "optimizer": "adam"}
    spec = LineageSpec.model_validate({**sweep.base, "train": train})
    params = flatten(spec.model_dump(mode="json"))  # as trainables.tracking logs them: str() of each
    assert params["train.nesterov"] == "True"
    assert _spec_from_params(sweep, params, lineage_id(spec)) == spec
