"""Receptive fields: patches are local, random masks are not, exact pair histograms, 1-D inputs."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from analysis.receptive_fields import first_layer_mask, receptive_field_rows, receptive_fields
from trainables.masks import dense_masks
from trainables.models import build_model

PATCH_SPREAD = (4 + 4 * math.sqrt(2)) / 9  # mean distance of a 3x3 patch's cells to its centre


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_units_keeping_a_3x3_patch_are_local():
    g = _gen()
    mask = torch.zeros(16, 1, 32, 32, dtype=torch.bool)
    for unit in range(16):
        row, col = torch.randint(0, 30, (2,), generator=g).tolist()
        mask[unit, 0, row:row + 3, col:col + 3] = True
    rf = receptive_fields(mask.reshape(16, -1), (1, 32, 32), generator=g, layer="fc1")
    np.testing.assert_array_equal(rf.n_inputs, 9)
    np.testing.assert_allclose(rf.spread, PATCH_SPREAD, rtol=1e-12)
    assert (rf.locality > 0.85).all() and (rf.locality < 1).all()


def test_random_masks_have_locality_near_zero():
    g = _gen(1)
    rf = receptive_fields(torch.rand(64, 3 * 16 * 16, generator=g) < 0.3, (3, 16, 16), generator=g)
    assert abs(np.mean(rf.locality)) < 0.02 and np.std(rf.locality) < 0.05


def test_counts_and_undefined_units():
    mask = torch.zeros(3, 2 * 4 * 4, dtype=torch.bool)
    mask[1, 5] = True  # one input: spread 0, locality undefined
    mask[2, [0, 3, 16 + 12, 16 + 15]] = True  # corners (0,0), (0,3) in channel 0; (3,0), (3,3) in channel 1
    rf = receptive_fields(mask, (2, 4, 4), generator=_gen())
    np.testing.assert_array_equal(rf.n_inputs, [0, 1, 4])
    assert math.isnan(rf.spread[0]) and rf.spread[1] == 0.0
    np.testing.assert_allclose(rf.spread[2], 1.5 * math.sqrt(2))
    assert math.isnan(rf.locality[0]) and math.isnan(rf.locality[1]) and not math.isnan(rf.locality[2])
    rows = receptive_field_rows("cabc-s0/L02", rf)
    assert rows[0] == {"checkpoint_id": "cabc-s0/L02", "layer": "", "unit": 0, "n_inputs": 0,
                       "spread": None, "locality": None}
    assert rows[2]["n_inputs"] == 4 and rows[2]["spread"] == pytest.approx(1.5 * math.sqrt(2))


def test_histograms_match_brute_force_pair_counts():
    g = _gen(2)
    shape = (2, 4, 5)
    mask = torch.rand(6, 40, generator=g) < 0.5
    rf = receptive_fields(mask, shape, generator=g)
    same, cross = np.zeros(len(rf.bins) - 1, int), np.zeros(len(rf.bins) - 1, int)
    for unit in range(len(mask)):
        for a, b in itertools.combinations(mask[unit].nonzero().ravel().tolist(), 2):
            (ca, ha, wa), (cb, hb, wb) = np.unravel_index(a, shape), np.unravel_index(b, shape)
            k = np.searchsorted(rf.bins, math.hypot(ha - hb, wa - wb), side="right") - 1
            (same if ca == cb else cross)[k] += 1
    np.testing.assert_array_equal(rf.displacement_same_channel, same)
    np.testing.assert_array_equal(rf.displacement_cross_channel, cross)
    n = mask.sum(dim=1).numpy()
    assert same.sum() + cross.sum() == (n * (n - 1) // 2).sum()
    np.testing.assert_array_equal(rf.bins, [0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5])


def test_one_dimensional_signals():
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0, 10:15] = True  # a run of 5 samples: distances to the centre 2, 1, 0, 1, 2
    mask[1, ::4] = True
    with_channel = receptive_fields(mask, (1, 40), generator=_gen())
    flat = receptive_fields(mask, (40,), generator=_gen())
    np.testing.assert_array_equal(with_channel.locality, flat.locality)
    np.testing.assert_allclose(flat.spread[0], 1.2)
    assert flat.locality[0] > 0.8 and flat.locality[1] < 0
    np.testing.assert_array_equal(flat.displacement_cross_channel, 0)
    assert flat.displacement_same_channel.sum() == 10 + 45
    # The run has 4, 3, 2, 1 pairs at distances 1..4; the comb 9 neighbours at 4 (and more beyond).
    assert flat.displacement_same_channel[1:6].tolist() == [4, 3, 2, 1 + 9, 0]
    assert len(flat.bins) == 41  # 0, 0.5, ..., 39.5: the largest distance is 39


def test_seeded_generator_gives_identical_results():
    mask = torch.rand(8, 64, generator=_gen(3)) < 0.4
    a = receptive_fields(mask, (1, 8, 8), generator=_gen(7))
    b = receptive_fields(mask, (1, 8, 8), generator=_gen(7))
    np.testing.assert_array_equal(a.locality, b.locality)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"mask must be \[units, 48\]"):
        receptive_fields(torch.ones(2, 40, dtype=torch.bool), (3, 4, 4), generator=_gen())
    with pytest.raises(ValueError, match="input_shape"):
        receptive_fields(torch.ones(2, 40, dtype=torch.bool), (1, 1, 4, 10), generator=_gen())
    with pytest.raises(ValueError, match="n_random"):
        receptive_fields(torch.ones(2, 40, dtype=torch.bool), (40,), generator=_gen(), n_random=0)


def test_first_layer_mask_of_fully_connected_and_conv_models():
    model = build_model("lenet_300_100", input_shape=(1, 8, 8), num_classes=10)
    masks = dense_masks(model, ("fc1.weight", "fc2.weight"))
    masks["fc1.weight"][0, 0] = False
    layer, mask = first_layer_mask(model, masks)
    assert layer == "fc1" and mask.shape == (300, 64) and mask.dtype == torch.bool and not mask[0, 0]
    with pytest.raises(ValueError, match="fc1.weight"):
        first_layer_mask(model, {"fc2.weight": masks["fc2.weight"]})
    conv = build_model("lenet5", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match="convolution 'conv1'"):
        first_layer_mask(conv, dense_masks(conv, ("conv1.weight",)))
