"""The analysis spec: measure options and scopes are checked with the sweep file, all at once,
naming the field, the value and what is valid, instead of failing first inside a tile actor; a
list of scopes is canonical and leaves the analysis id alone."""
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


def test_a_list_of_scopes_is_canonical_and_leaves_the_analysis_id_alone():
    from analysis.specs import analysis_id

    union = AnalysisSpec(scope=["seeds", "dense"])
    assert union.scope == ("dense", "seeds") and union == AnalysisSpec(scope=["dense", "seeds"])
    assert AnalysisSpec(scope=["seeds"]) == AnalysisSpec(scope="seeds")
    assert AnalysisSpec(scope=["seeds"]).model_dump()["scope"] == "seeds"
    assert AnalysisSpec.model_validate_json(union.model_dump_json()) == union
    # The scope picks pairs, not values: every scope, alone or together, shares the rows of one
    # analysis (pinned ids: a changed id would recompute every existing workdir).
    for scope in ("dense", "seeds", ["all", "lineage"], ["seeds", "dense"]):
        assert analysis_id(AnalysisSpec(scope=scope)) == "aa9d5f6d002d9"
        assert analysis_id(AnalysisSpec(scope=scope, probe_size=100)) == "ad7785f8c0a67"


@pytest.mark.parametrize("scope,message", [
    ("everything", "unknown scope 'everything'; expected one of ['all', 'dense', 'lineage', 'seeds'] or a list of "
                   "them (got 'everything')"),
    (["dense", 3], "unknown scope 3; expected one of ['all', 'dense', 'lineage', 'seeds'] or a list of them "
                   "(got ['dense', 3])"),
    ([], "at least one scope is needed; expected some of ['all', 'dense', 'lineage', 'seeds'] (got [])"),
    (["seeds", "dense", "seeds"], "scope 'seeds' is listed twice; expected distinct scopes of ['all', 'dense', "
                                  "'lineage', 'seeds'] (got ['seeds', 'dense', 'seeds'])"),
    (7, "expected a scope or a non-empty list of distinct scopes, each one of ['all', 'dense', 'lineage', "
        "'seeds'] (got 7)"),
])
def test_a_bad_scope_is_a_sweep_file_error(tmp_path, capsys, scope, message):
    import yaml

    from orchestrator.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "workdir": str(tmp_path / "w"), "model": "lenet_300_100",
                                    "dataset": "digits", "analysis": {"scope": scope}}))
    assert main(["analyze", str(path)]) == 2
    assert f"analysis.scope: {message}" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
