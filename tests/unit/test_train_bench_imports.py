"""benchmarks/train_bench.py imports, its two training loops agree, and its --quick path runs.

Benchmarks are never run by the test suite; this only keeps the module from rotting.
"""
from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("train_bench")


def _effective_weights(model: torch.nn.Module, names) -> dict[str, torch.Tensor]:
    """The weights the forward pass uses (torch.nn.utils.prune keeps them as plain attributes)."""
    return {name: getattr(model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]) for name in names}


def test_step_functions_agree(bench):
    runs = bench.make_runs("lenet_300_100", device=torch.device("cpu"), batch_size=16, steps_per_epoch=2)
    assert set(runs) == {"impsweep_masked", "impsweep_dense", "baseline_masked"}
    assert bench._masks_equal(runs)  # torch picked exactly impsweep's weights
    masks = runs["impsweep_masked"].masks
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert kept == pytest.approx(1 - bench.SPARSITY, abs=1e-4)
    x = torch.randn(5, *bench.CASES["lenet_300_100"].input_shape)
    outputs = {}
    for key, run in runs.items():
        assert run.steps(1) == 1
        assert run.epochs(1) == 2
        outputs[key] = run.logits(x)
    assert {tuple(out.shape) for out in outputs.values()} == {(5, bench.NUM_CLASSES)}
    assert all(torch.isfinite(out).all() for out in outputs.values())
    # After training steps, the pruned weights are still zero in both masked loops, and not in the dense one.
    for key in ("impsweep_masked", "baseline_masked"):
        weights = _effective_weights(runs[key].model, masks)
        for name, mask in masks.items():
            assert not weights[name][~mask].any(), (key, name)
            assert weights[name][mask].any(), (key, name)
    dense = _effective_weights(runs["impsweep_dense"].model, masks)
    assert any(dense[name][~mask].any() for name, mask in masks.items())


def test_epochs_for_whole_epochs(bench):
    assert bench.epochs_for(8) == (1, 8)
    assert bench.epochs_for(64) == (1, 64)
    assert bench.epochs_for(100) == (2, 50)
    epochs, per_epoch = bench.epochs_for(130)
    assert per_epoch <= bench.MAX_STEPS_PER_EPOCH and epochs * per_epoch >= 130


def test_quick_path_writes_json(bench, tmp_path, capsys):
    out = tmp_path / "train-cpu.json"
    results = bench.main(["--quick", "--models", "lenet_300_100", "--out", str(out)])
    stored = json.loads(out.read_text())
    assert stored == json.loads(json.dumps(results))
    assert stored["device"] == "cpu" and stored["quick"] is True and stored["threads"] >= 1
    row = stored["models"]["lenet_300_100"]
    assert row["masks_equal"] is True
    assert row["steps"] == bench.QUICK["steps"] and row["batch_size"] == bench.QUICK["batch_size"]
    for key in ("impsweep_images_per_s", "baseline_images_per_s", "masked_step_s", "dense_step_s"):
        assert row[key] > 0, key
    assert row["ratio"] == pytest.approx(row["impsweep_images_per_s"] / row["baseline_images_per_s"])
    assert row["masked_over_dense"] == pytest.approx(row["masked_step_s"] / row["dense_step_s"])
    assert row["targets"]["ratio_min"] == 2.0 and isinstance(row["targets"]["ratio_met"], bool)
    assert "lenet_300_100" in capsys.readouterr().out


def test_bf16_row_is_impsweeps_loop_in_bf16(bench, tmp_path):
    runs = bench.make_runs("lenet_300_100", device=torch.device("cpu"), batch_size=16, steps_per_epoch=2,
                           bf16_row=True)
    assert set(runs) == {"impsweep_masked", "impsweep_dense", "baseline_masked", "impsweep_bf16"}
    fp32, bf16 = runs["impsweep_masked"], runs["impsweep_bf16"]
    assert (fp32.precision, bf16.precision) == ("auto", "bf16")
    for run in (fp32, bf16):
        run.epochs(1)
    masks = bf16.masks
    weights = _effective_weights(bf16.model, masks)
    assert all(not weights[n][~m].any() for n, m in masks.items())  # the same masked loop
    assert any(not torch.equal(fp32.model.get_parameter(n), bf16.model.get_parameter(n)) for n in masks)
    out = tmp_path / "train-cpu.json"
    stored = bench.main(["--quick", "--models", "lenet_300_100", "--bf16-row", "yes", "--out", str(out)])
    row = stored["models"]["lenet_300_100"]
    assert stored["bf16_row"] is True and row["precision"] == "fp32"
    assert row["bf16_ratio"] == pytest.approx(row["bf16_images_per_s"] / row["baseline_images_per_s"])
    assert len(row["repeat_seconds"]["impsweep_bf16"]) == bench.QUICK["repeats"]
    none = bench.main(["--quick", "--models", "lenet_300_100", "--bf16-row", "no", "--out", str(out)])
    assert none["bf16_row"] is False and "bf16_ratio" not in none["models"]["lenet_300_100"]
