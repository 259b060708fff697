"""Fixtures of the engine's tests: a digest that tells whether two state dicts are bit-identical."""
from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
import torch


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture
def digest() -> Callable[[dict[str, torch.Tensor]], str]:
    """sha256 over a state dict's names and tensor bytes (equal digests: bit-identical tensors)."""
    return _state_digest
