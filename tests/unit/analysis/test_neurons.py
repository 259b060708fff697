"""PSP-entropy: clamp and half-on limits, conv channel averaging, per-position units, rows."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from analysis.activations import capture
from analysis.neurons import RATE_CLAMP, neuron_rows, psp_entropy
from trainables.models import build_model
from trainables.models.layers import probed_sequential

H_CLAMP = -(RATE_CLAMP * math.log2(RATE_CLAMP) + (1 - RATE_CLAMP) * math.log2(1 - RATE_CLAMP))


def _dense_probe_net() -> nn.Module:
    """One scalar input, three units: PSP = x (half on), +1 (always on), -1 (always off)."""
    fc = nn.Linear(1, 3)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0], [0.0], [0.0]]))
        fc.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    return probed_sequential([("fc1", fc), ("fc1_relu", nn.ReLU()), ("fc2", nn.Linear(3, 2))])


def _alternating(num_classes: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x = ±1 alternating within every class: exactly half of each class is positive."""
    y = torch.arange(num_classes).repeat_interleave(per_class)
    x = torch.tensor([1.0, -1.0]).repeat(num_classes * per_class // 2)[:, None]
    return x, y


def test_limits_half_on_is_one_bit_per_class_and_constant_units_sit_at_the_clamp():
    x, y = _alternating(num_classes=4, per_class=6)
    (result,) = psp_entropy(_dense_probe_net(), x, y=y, num_classes=4)
    assert result.layer == "fc1_relu"  # the logits layer fc2 has no pre-activation: skipped
    assert result.rates.shape == (3, 4) and result.entropy.shape == (3,)
    np.testing.assert_allclose(result.rates[0], 0.5)
    np.testing.assert_allclose(result.rates[1], 1 - RATE_CLAMP)
    np.testing.assert_allclose(result.rates[2], RATE_CLAMP)
    np.testing.assert_allclose(result.entropy, [4.0, 4 * H_CLAMP, 4 * H_CLAMP], rtol=1e-12)


def test_batching_does_not_change_counts():
    x, y = _alternating(num_classes=3, per_class=10)
    whole = psp_entropy(_dense_probe_net(), x, y=y, num_classes=3)[0]
    batched = psp_entropy(_dense_probe_net(), x, y=y, num_classes=3, batch_size=7)[0]
    np.testing.assert_array_equal(whole.rates, batched.rates)


def test_absent_class_is_named():
    x, y = _alternating(num_classes=3, per_class=4)
    with pytest.raises(ValueError, match=r"classes \[3, 4\]"):
        psp_entropy(_dense_probe_net(), x, y=y, num_classes=5)
    with pytest.raises(ValueError, match="outside"):
        psp_entropy(_dense_probe_net(), x, y=y, num_classes=2)


def _conv_probe_net() -> nn.Module:
    """1x1 conv with channels +x and -x, so each channel's PSP is the input map or its negation."""
    conv = nn.Conv2d(1, 2, kernel_size=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    return probed_sequential([("conv1", conv), ("conv1_relu", nn.ReLU()), ("flatten", nn.Flatten()),
                              ("fc", nn.Linear(2 * 2 * 2, 2))])


def test_conv_channels_average_the_psp_over_positions_before_thresholding():
    # Every 2x2 map is [[5, -1], [-1, -1]]: positive on average, positive at one position of four.
    x = torch.tensor([[5.0, -1.0], [-1.0, -1.0]]).expand(8, 1, 2, 2).clone()
    y = torch.arange(2).repeat(4)
    (channels,) = psp_entropy(_conv_probe_net(), x, y=y, num_classes=2)
    np.testing.assert_allclose(channels.rates, [[1 - RATE_CLAMP] * 2, [RATE_CLAMP] * 2])
    (positions,) = psp_entropy(_conv_probe_net(), x, y=y, num_classes=2, per_position=True)
    assert positions.rates.shape == (2 * 4, 2)
    on = np.clip(np.array([1, 0, 0, 0, 0, 1, 1, 1], dtype=float), RATE_CLAMP, 1 - RATE_CLAMP)
    np.testing.assert_allclose(positions.rates, np.stack([on, on], axis=1))


def test_rates_match_captured_preactivations_of_a_real_model():
    torch.manual_seed(0)
    model = build_model("lenet5", input_shape=(1, 8, 8), num_classes=3)
    model.train()
    x, y = torch.randn(30, 1, 8, 8), torch.arange(3).repeat(10)
    results = psp_entropy(model, x, y=y, num_classes=3, per_position=True)
    assert model.training  # the caller's mode is restored
    assert [r.layer for r in results] == ["conv1_relu", "conv2_relu", "fc1_relu", "fc2_relu"]
    acts = capture(model, x, layers=tuple(model.preactivation_layers[r.layer] for r in results))
    for r in results:
        on = acts[model.preactivation_layers[r.layer]].reshape(30, -1) > 0
        expected = np.stack([on[y.numpy() == c].mean(axis=0) for c in range(3)], axis=1)
        np.testing.assert_allclose(r.rates, np.clip(expected, RATE_CLAMP, 1 - RATE_CLAMP))
    assert results[0].rates.shape == (6 * 8 * 8, 3) and results[3].rates.shape == (84, 3)


def test_rows_one_per_unit():
    x, y = _alternating(num_classes=2, per_class=2)
    rows = neuron_rows("cabc-s0/L01", psp_entropy(_dense_probe_net(), x, y=y, num_classes=2))
    assert [r["unit"] for r in rows] == [0, 1, 2]
    assert rows[0] == {"checkpoint_id": "cabc-s0/L01", "layer": "fc1_relu", "unit": 0, "entropy": 2.0,
                       "rates": [0.5, 0.5]}
