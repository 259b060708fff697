"""Properties of the measures and of `pairwise`: invariances, monotonicity, null statuses,
agreement of `pairwise` with `similarity`."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from analysis.similarity import MEASURES, pairwise, similarity

SIMILARITIES = [name for name, info in MEASURES.items() if info.kind == "similarity"]
CCA_NULL_AT_FULL_RANK = ["mean_cca", "mean_cca_sq", "pwcca", "pwcca_google"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _layers(seed: int = 0, n: int = 40, count: int = 5):
    gen = _gen(seed)
    base = _randn(gen, n, 4)
    return [base @ _randn(gen, 4, 6 + k) + 0.6 * _randn(gen, n, 6 + k) for k in range(count)]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_orthogonal_scale_shift_gives_identity_value(name):
    gen = _gen(1)
    x = _randn(gen, 50, 6)
    q, _ = torch.linalg.qr(_randn(gen, 6, 6))
    expected = 0.0 if MEASURES[name].kind == "distance" else 1.0
    assert abs(_quiet(similarity, x, 2.5 * x @ q - 1.0, measure=name) - expected) <= 1e-8


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_invertible_map_keeps_only_cca_at_one(name):
    gen = _gen(2)
    # A decaying spectrum, so that SVCCA's 99% cut keeps fewer directions than there are.
    scales = torch.tensor([3.0, 2.0, 1.0, 1.0, 0.1, 0.05], dtype=torch.float64)
    x = _randn(gen, 60, 6) * scales
    value = _quiet(similarity, x, x @ (_randn(gen, 6, 6) + 3 * torch.eye(6, dtype=x.dtype)),
                   measure=name)
    if name in ("mean_cca", "mean_cca_sq", "pwcca", "pwcca_google"):
        assert abs(value - 1.0) <= 1e-8
    elif name == "procrustes":
        assert value > 1e-3
    else:
        assert value < 1.0 - 1e-5


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_value_decreases_with_noise(name):
    gen = _gen(3)
    x = _randn(gen, 80, 5) @ _randn(gen, 5, 8)
    noise = _randn(gen, 80, 8)
    values = [_quiet(similarity, x, x + level * noise, measure=name) for level in (0.1, 0.3, 1, 3)]
    if MEASURES[name].kind == "distance":
        values = [-v for v in values]
    assert all(a > b for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_tiny_scale_changes_nothing(name):
    x, y = _layers(4)[:2]
    assert abs(_quiet(similarity, 1e-6 * x, 1e-6 * y, measure=name)
               - _quiet(similarity, x, y, measure=name)) <= 1e-8


@pytest.mark.parametrize("name", CCA_NULL_AT_FULL_RANK)
def test_cca_is_null_when_rank_reaches_n_minus_1(name):
    gen = _gen(5)
    result = pairwise([_randn(gen, 12, 20)], [_randn(gen, 12, 3)], measure=name)
    assert math.isnan(float(result.values[0, 0]))
    assert result.status[0, 0] == "degenerate"


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_constant_representation_is_null_for_every_measure(name):
    x = _layers(6)[0]
    constant = torch.full((x.shape[0], 4), 3.0, dtype=torch.float64)
    result = _quiet(pairwise, [x, constant], measure=name)
    assert result.status[0, 1] == result.status[1, 0] == result.status[1, 1] == "constant"
    assert torch.isnan(result.values[1]).all() and result.status[0, 0] == "ok"


def test_dead_units_are_dropped_not_counted():
    x, y = _layers(7)[:2]
    padded = torch.cat([x, torch.zeros(x.shape[0], 3, dtype=x.dtype)], dim=1)
    for name in MEASURES:
        assert abs(_quiet(similarity, padded, y, measure=name)
                   - _quiet(similarity, x, y, measure=name)) <= 1e-10
    result = pairwise([padded], [y], measure="mean_cca")
    assert result.a_dim[0, 0] == x.shape[1] and result.b_dim[0, 0] == y.shape[1]


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_pairwise_equals_similarity_matrix(name):
    layers = _layers(8)
    gen = _gen(8)
    layers.append(torch.relu(_randn(gen, 40, 9)))
    result = _quiet(pairwise, layers, measure=name)
    expected = torch.tensor([[_quiet(similarity, a, b, measure=name) for b in layers]
                             for a in layers], dtype=torch.float64)
    torch.testing.assert_close(result.values, expected, atol=1e-10, rtol=0, equal_nan=True)
    if MEASURES[name].symmetric:
        torch.testing.assert_close(result.values, result.values.T, atol=1e-12, rtol=0)
    diagonal = 0.0 if MEASURES[name].kind == "distance" else 1.0
    assert torch.allclose(result.values.diagonal(),
                          torch.full((len(layers),), diagonal, dtype=torch.float64), atol=1e-8)


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_pairwise_rectangular_and_conv_blocks(name):
    gen = _gen(9)
    xs = [_randn(gen, 30, 3, 4, 4), _randn(gen, 30, 5, 2, 2), _randn(gen, 30, 6)]
    ys = [_randn(gen, 30, 2, 4, 4), _randn(gen, 30, 7)]
    for conv in ("auto", "flatten", "spatial", "avgpool"):
        result = _quiet(pairwise, xs, ys, measure=name, conv=conv)
        assert result.values.shape == (3, 2) and result.status.shape == (3, 2)
        for i, x in enumerate(xs):
            for j, y in enumerate(ys):
                expected = _quiet(similarity, x, y, measure=name, conv=conv)
                got = float(result.values[i, j])
                assert (math.isnan(got) and math.isnan(expected)) or abs(got - expected) <= 1e-10


def test_pwcca_order_depends_only_on_ties():
    gen = _gen(10)
    x, y = _randn(gen, 50, 5), _randn(gen, 50, 8)
    y = y + x @ _randn(gen, 5, 8)
    assert similarity(x, y, measure="pwcca") == pytest.approx(similarity(y, x, measure="pwcca"),
                                                              abs=1e-12)
    z = _randn(gen, 50, 5) + x
    forward, backward = similarity(x, z, measure="pwcca"), similarity(z, x, measure="pwcca")
    result = pairwise([x, z], measure="pwcca")
    assert float(result.values[0, 1]) == pytest.approx(forward, abs=1e-12)
    assert float(result.values[1, 0]) == pytest.approx(backward, abs=1e-12)


def test_debiased_cka_is_not_clipped_and_differs_when_n_lt_p():
    gen = _gen(11)
    x, y = _randn(gen, 20, 60), _randn(gen, 20, 50)
    biased = similarity(x, y, measure="linear_cka")
    debiased = similarity(x, y, measure="linear_cka_debiased")
    assert biased > 0.5 and abs(debiased) < 0.2


def test_minibatch_drops_a_final_batch_below_four_rows():
    x, y = _layers(12, n=43)[:2]
    assert similarity(x, y, measure="linear_cka_minibatch", batch_size=20) == pytest.approx(
        similarity(x[:40], y[:40], measure="linear_cka_minibatch", batch_size=20), abs=1e-12)
    # 43 = 3 * 13 + 4: a final batch of 4 rows counts.
    assert similarity(x, y, measure="linear_cka_minibatch", batch_size=13) != pytest.approx(
        similarity(x[:39], y[:39], measure="linear_cka_minibatch", batch_size=13), abs=1e-6)


def test_few_rows_are_null_for_debiased_cka():
    gen = _gen(13)
    result = pairwise([_randn(gen, 3, 4)], [_randn(gen, 3, 2)], measure="linear_cka_debiased")
    assert result.status[0, 0] == "too_few_rows" and math.isnan(float(result.values[0, 0]))


def test_rbf_zero_bandwidth_is_null():
    gen = _gen(14)
    x = torch.zeros(10, 3, dtype=torch.float64)
    x[0] = 1.0
    result = pairwise([x], [_randn(gen, 10, 3)], measure="rbf_cka")
    assert result.status[0, 0] == "zero_bandwidth"


def test_nbs_relatives():
    x, y = _layers(15)[:2]
    nbs = similarity(x, y, measure="nbs")
    assert similarity(x, y, measure="procrustes") == pytest.approx(math.acos(nbs), abs=1e-12)
    np.testing.assert_allclose(pairwise([x, y], measure="procrustes").values.cos(),
                               pairwise([x, y], measure="nbs").values, atol=1e-12)


@pytest.mark.parametrize("name", ["linear_cka", "linear_cka_debiased"])
def test_gram_and_feature_forms_agree(name):
    from analysis.similarity.kernels import evaluate
    from analysis.similarity.registry import resolve_options
    from analysis.similarity.sketch import build_sketch

    layers = _layers(16, n=30) + [_layers(17, n=30)[0][:, :2]]
    info, options = MEASURES[name], resolve_options(name, {})
    forward = []
    for form in ("gram", "features"):
        sketches = [build_sketch(z, info, options=options, form=form) for z in layers]
        forward.append(evaluate(info, options, rows=sketches, cols=sketches, same=True,
                                precision="exact").forward)
    torch.testing.assert_close(forward[0], forward[1], atol=1e-12, rtol=0)


def _anisotropic():
    """A 500 x 64 Gaussian with a power-law spectrum k^-1.5 in a random basis, and an
    orthogonal Q: arccos of the nuclear-norm NBS read 3e-6 to 6e-6 for Y = 3.7 X (Q)."""
    gen = _gen(1)
    z = _randn(gen, 500, 64)
    q, _ = torch.linalg.qr(_randn(gen, 64, 64))
    return z * torch.arange(1, 65, dtype=torch.float64) ** -1.5 @ q, q


def test_procrustes_of_scaled_copy_is_zero():
    x, _ = _anisotropic()
    assert similarity(x, 3.7 * x, measure="procrustes") <= 1e-7
    assert float(pairwise([x], [3.7 * x], measure="procrustes").values[0, 0]) <= 1e-7


def test_procrustes_of_rotated_scaled_copy_is_zero():
    x, q = _anisotropic()
    assert similarity(x, 3.7 * x @ q, measure="procrustes") <= 1e-7


def test_procrustes_residual_agrees_with_arccos_in_batches():
    """Near-identical pairs (residual route) and others (arccos) in one batched grid; the
    residual route itself matches arccos(NBS) on pairs away from 0."""
    from analysis.similarity.nbs import residual_angle

    x, q = _anisotropic()
    gen = _gen(18)
    q40, _ = torch.linalg.qr(_randn(gen, 40, 40))
    layers = [x, 3.7 * x @ q, x[:, :40], 2.0 * x[:, :40] @ q40, _randn(gen, 500, 40)]
    values = pairwise(layers, measure="procrustes").values
    nbs = pairwise(layers, measure="nbs").values
    near = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0],
                         [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert float(values[near].max()) <= 1e-7
    torch.testing.assert_close(values[~near], nbs[~near].arccos(), rtol=0, atol=1e-10)
    pairs = [(a - a.mean(0), b - b.mean(0)) for a, b in zip(layers, layers[2:])]
    for a, b in pairs:
        expected = math.acos(similarity(a, b, measure="nbs"))
        assert float(residual_angle(a[None], b[None])) == pytest.approx(expected, abs=1e-10)
