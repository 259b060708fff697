"""The analysis spec: measure options are checked with the sweep file, all at once, naming the
measure, the option and what is valid, instead of failing first inside a tile actor."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from analysis.specs import AnalysisSpec


def test_measure_options_are_checked_when_the_spec_is():
    with pytest.raises(ValidationError) as info:
        AnalysisSpec(options={"rbf_cka": {"treshold": 0.5}, "svcca": {"variance": 2}})
    text = str(info.value)
    assert "rbf_cka: unknown option 'treshold' for measure 'rbf_cka'; expected one of ['max_rows', 'threshold']" in text
    assert "svcca: invalid option variance=2; expected a number in (0, 1]" in text
    assert AnalysisSpec(options={"rbf_cka": {"threshold": 0.5}, "pwcca": {"max_rows": 100}}).options["pwcca"] == {
        "max_rows": 100}


def test_a_sweep_with_bad_measure_options_is_refused_before_anything_runs(tmp_path):
    from orchestrator.specs import SpecError, load_sweep

    raw = {"name": "s", "workdir": str(tmp_path / "w"), "model": "lenet_300_100", "dataset": "digits",
           "analysis": {"measures": ["linear_cka"], "options": {"linear_cka": {"threshold": 1}}}}
    with pytest.raises(SpecError, match=r"analysis.options.*linear_cka: unknown option 'threshold'"):
        load_sweep(raw)
    assert not (tmp_path / "w").exists()
