"""A golden training run (after torchtune's recipe tests): one tiny lineage whose per-level
losses, accuracies and per-layer pruning counts are pinned, so that numeric drift in the engine
(data order, initialisation, the optimizer's arithmetic, masking, evaluation) fails a test
instead of passing silently.

The values were produced by this engine with torch 2.14.1 on the CPU, one intra-op thread
(the thread count changes the rounding of the matrix products by about 1e-8 relative). They
hold to 1e-6 relative; a deliberate change of the engine's arithmetic re-pins them, and says
why in its commit.
"""
from __future__ import annotations

import pytest
import torch

from trainables import LineageSpec, lineage_id, run_lineage

PINNED_TORCH = "2.14.1"

SPEC = {
    "model": "lenet_300_100", "dataset": "digits", "seed": 0,
    "train": {"lr": 0.05, "momentum": 0.9, "batch_size": 128, "epochs": 2},  # 12 steps an epoch
    "prune": {"rate": 0.5, "levels": 1, "exclude": ["bias"]},  # L0 dense, L1 at 50%, rewound to init
}
LINEAGE_ID = "cbcdba7fd9816-s0"

# level -> metrics
METRICS = {
    0: {"sparsity": 0.0, "train_loss": 0.9534611652294794, "test_loss": 0.4348542107476128,
        "test_acc": 322 / 360},
    1: {"sparsity": 0.5, "train_loss": 0.5469771474599838, "test_loss": 0.3948040432400174,
        "test_acc": 310 / 360},
}
# level -> (layer, parameters, zeros): global magnitude pruning's choice, exact
LAYERS = {
    0: [("fc1.weight", 19200, 0), ("fc2.weight", 30000, 0), ("fc3.weight", 1000, 0)],
    1: [("fc1.weight", 19200, 5775), ("fc2.weight", 30000, 19069), ("fc3.weight", 1000, 256)],
}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(not torch.__version__.startswith(PINNED_TORCH),
                    reason=f"golden values are pinned for torch {PINNED_TORCH} (the Makefile's pin)")
def test_golden_lineage(tmp_path, one_thread):
    spec = LineageSpec.model_validate(SPEC)
    assert lineage_id(spec) == LINEAGE_ID
    result = run_lineage(spec, workdir=tmp_path)
    assert [lv.level for lv in result.levels] == [0, 1]
    for lv in result.levels:
        got = {k: lv.metrics[k] for k in METRICS[lv.level]}
        torch.testing.assert_close(got, METRICS[lv.level], rtol=1e-6, atol=0,
                                   msg=lambda m, level=lv.level: f"level {level}: {m}")
        assert [(l.layer, l.n_params, l.n_zero) for l in lv.layers] == LAYERS[lv.level]
