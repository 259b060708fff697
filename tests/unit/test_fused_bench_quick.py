"""benchmarks/fused_bench.py: its --quick path runs both modes and records what it measured.

Benchmarks are never run by the test suite; this only keeps the module from rotting.
"""
from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("fused_bench")


@pytest.mark.parametrize("precision,recorded", [("auto", "fp32"), ("bf16", "bf16 autocast")])
def test_quick_path_writes_json(bench, tmp_path, precision, recorded):
    out = tmp_path / "fused-cpu.json"
    results = bench.main(["--quick", "--cases", "lenet_300_100", "--precision", precision, "--out", str(out)])
    stored = json.loads(out.read_text())
    assert stored == json.loads(json.dumps(results))
    assert stored["precision"] == recorded and stored["quick"] is True
    row = stored["cases"]["lenet_300_100"]
    assert row["k"] == 16 and len(row["sequential_wall_s"]) == len(row["fused_wall_s"]) == 1
    assert row["ratio"] == pytest.approx(row["fused_images_per_s"] / row["sequential_images_per_s"])
    if precision == "auto":  # fp32 on CPU: fused equals sequential
        assert row["masks_equal"] and row["max_rel_weight_diff"] <= 1e-5
