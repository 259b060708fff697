"""Quality: IMP keeps LeNet-300-100's accuracy on digits down to about 80% sparsity."""
from __future__ import annotations

import pytest

from trainables import LineageSpec, run_lineage

pytestmark = pytest.mark.integration


def test_lenet_digits_imp_to_80_percent_within_one_point(tmp_path):
    spec = LineageSpec.model_validate({
        "model": "lenet_300_100", "dataset": "digits", "seed": 0,
        "train": {"lr": 0.05, "momentum": 0.9, "batch_size": 64, "epochs": 20},
        "prune": {"rate": 0.2, "levels": 7, "rewind": "init", "exclude": ["bias"]},
    })
    result = run_lineage(spec, workdir=tmp_path)
    dense, last = result.levels[0].metrics, result.levels[-1].metrics
    assert last["sparsity"] == pytest.approx(1 - 0.8**7, abs=1e-4)  # 0.790
    assert dense["test_acc"] >= 0.95
    assert last["test_acc"] >= dense["test_acc"] - 0.01
