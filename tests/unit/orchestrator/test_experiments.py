"""The lineages a Tune experiment's failed trials leave: named by their configs, else by what
the trial reported, else by its path."""
from __future__ import annotations

from types import SimpleNamespace

from orchestrator.experiments import failed_lineages
from trainables.ids import lineage_id
from trainables.tracking import TrackingRef
from trainables.trials import BundleTrial, LineageTrial, SearchTrial

REF = TrackingRef("sqlite:///m.db", "1", "", "s", "r")


def _result(config, *, error=True, metrics=None, path="/trials/t"):
    return SimpleNamespace(config=config, error=RuntimeError("x") if error else None, metrics=metrics or {},
                           path=path)


def test_failed_trials_name_their_lineages(tiny_spec):
    single, first, second = (LineageTrial(lineage_id(s), s, "/w", REF) for s in (tiny_spec(seed=k) for k in range(3)))
    search = SearchTrial({"model": "lenet_300_100", "dataset": "digits"}, "/w", REF, {"seed": 4})
    results = [
        _result(single.to_config()),
        _result(single.to_config(), error=False),
        _result(BundleTrial((first, second)).to_config()),
        _result(search.to_config(), metrics={"lineage_id": "c0696a4317a26-s4"}),
        _result(search.to_config()),  # failed before its first report
        _result(None),
    ]
    assert failed_lineages(results) == (single.lineage_id, first.lineage_id, second.lineage_id,
                                        "c0696a4317a26-s4", "/trials/t", "/trials/t")
