"""Shared fixtures: tiny specs, and the environment every test runs in."""
from __future__ import annotations

import os

import pytest

# Ray's usage reporting would try the network; tests never need it.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Tiny tensors on 2 cores: a second intra-op thread costs more than it gains, and Ray workers
# started by the tests would oversubscribe the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def tiny_spec():
    """A LineageSpec that trains in well under a second: LeNet-300-100 on digits."""
    from trainables import LineageSpec

    def make(**overrides):
        base = {
            "model": "lenet_300_100",
            "dataset": "digits",
            "train": {"lr": 0.05, "batch_size": 128, "epochs": 2},
            "prune": {"rate": 0.2, "levels": 2, "exclude": ["bias"]},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return LineageSpec.model_validate(base)

    return make
