"""Every measure, conv mode and option against the golden values of SIMILARITY.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.similarity import pairwise, similarity

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
EXPECTED = json.loads((GOLDEN / "similarity_expected.json").read_text())
with np.load(GOLDEN / "similarity_cases.npz") as _archive:
    INPUTS = {key: _archive[key] for key in _archive.files}

ENTRIES = [(case_name, case, entry) for case_name, case in sorted(EXPECTED["cases"].items())
           for entry in case["values"]]


def _tolerance(measure: str) -> float:
    # google's PWCCA weighting depends on the arbitrary signs of an SVD.
    return 2e-2 if measure == "pwcca_google" else 1e-8


def _id(item) -> str:
    case_name, _, entry = item
    options = ",".join(f"{k}={v}" for k, v in sorted(entry["options"].items()))
    return f"{case_name}-{entry['measure']}-{entry['conv'] or 'auto'}-{options}"


@pytest.mark.parametrize("item", ENTRIES, ids=[_id(item) for item in ENTRIES])
def test_similarity_matches_golden_value(item):
    _, case, entry = item
    x, y = INPUTS[case["X"]], INPUTS[case["Y"]]
    got = similarity(x, y, measure=entry["measure"], conv=entry["conv"] or "auto",
                     **entry["options"])
    if entry["value"] is None:
        assert math.isnan(got)
    else:
        assert abs(got - entry["value"]) <= _tolerance(entry["measure"]), got


@pytest.mark.parametrize("case_name", sorted(EXPECTED["cases"]))
def test_pairwise_matches_golden_values(case_name):
    case = EXPECTED["cases"][case_name]
    x = torch.from_numpy(INPUTS[case["X"]])
    y = torch.from_numpy(INPUTS[case["Y"]])
    for entry in case["values"]:
        result = pairwise([x], [y], measure=entry["measure"], conv=entry["conv"] or "auto",
                          **entry["options"])
        got = float(result.values[0, 0])
        if entry["value"] is None:
            assert math.isnan(got) and result.status[0, 0] == "degenerate"
        else:
            assert result.status[0, 0] == "ok"
            assert abs(got - entry["value"]) <= _tolerance(entry["measure"]), entry
