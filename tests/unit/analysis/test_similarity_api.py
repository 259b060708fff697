"""The public API: registry metadata, argument errors, result records, devices."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import analysis.similarity as sim
from analysis.similarity import MEASURES, PairwiseResult, pairwise, resolve_conv, similarity

KEYS = ["mean_cca", "mean_cca_sq", "svcca", "pwcca", "pwcca_google", "linear_cka",
        "linear_cka_debiased", "linear_cka_minibatch", "rbf_cka", "nbs", "procrustes"]


def _pair(seed=0, n=30):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 5, generator=gen, dtype=torch.float64),
            torch.randn(n, 4, generator=gen, dtype=torch.float64))


def test_public_names():
    assert set(sim.__all__) >= {"similarity", "pairwise", "MEASURES", "PairwiseResult",
                                "resolve_conv"}


def test_registry_has_every_key_with_metadata():
    assert sorted(MEASURES) == sorted(KEYS)
    for name, info in MEASURES.items():
        assert info.name == name and info.kind in ("similarity", "distance")
        assert info.range[0] < info.range[1] and info.invariances
        assert isinstance(dict(info.defaults), dict)
    assert MEASURES["procrustes"].kind == "distance"
    assert MEASURES["procrustes"].range == (0.0, math.pi / 2)
    assert MEASURES["rbf_cka"].defaults["threshold"] == 0.8
    assert MEASURES["svcca"].defaults["variance"] == 0.99
    assert MEASURES["linear_cka_minibatch"].defaults["batch_size"] == 256
    assert MEASURES["mean_cca"].defaults["truncate"] is None
    with pytest.raises(TypeError):
        MEASURES["nbs"] = MEASURES["nbs"]  # type: ignore[index]


def test_resolve_conv_follows_the_seed_papers():
    for name in KEYS:
        expected = "spatial" if name in KEYS[:5] else "flatten"
        assert resolve_conv(name) == resolve_conv(name, "auto") == expected
        assert resolve_conv(name, "avgpool") == "avgpool"


@pytest.mark.parametrize("call,match", [
    (lambda x, y: similarity(x, y, measure="ckaa"), r"unknown measure 'ckaa'; expected one of"),
    (lambda x, y: similarity(x, y, measure="nbs", conv="pool"), r"unknown conv 'pool'"),
    (lambda x, y: similarity(x, y, measure="nbs", thresh=1),
     r"unknown option 'thresh'.*'max_rows'"),
    (lambda x, y: similarity(x, y, measure="rbf_cka", threshold=-1), r"threshold=-1"),
    (lambda x, y: similarity(x, y, measure="svcca", variance=1.5), r"variance=1.5"),
    (lambda x, y: similarity(x, y, measure="linear_cka_minibatch", batch_size=3), r"batch_size=3"),
    (lambda x, y: similarity(x, y[:10]), r"ys\[0\] has 10 examples.*expected 30"),
    (lambda x, y: similarity(x[0], y), r"xs\[0\] has shape \(5,\) \(rank 1\)"),
    (lambda x, y: similarity(x[None], y), r"rank 3"),
    (lambda x, y: similarity([[1.0]], y), r"type list"),
    (lambda x, y: pairwise(x, measure="nbs"), r"xs has type Tensor"),
    (lambda x, y: pairwise([], measure="nbs"), r"xs is empty"),
    (lambda x, y: pairwise([x], measure="nbs", precision="half"), r"unknown precision"),
    (lambda x, y: pairwise([x], measure="nbs", device="gpu0"), r"invalid device 'gpu0'"),
    (lambda x, y: similarity(x * math.nan, y), r"NaN or infinite"),
])
def test_bad_arguments_raise_value_error(call, match):
    x, y = _pair()
    with pytest.raises(ValueError, match=match):
        call(x, y)


def test_result_records_conv_options_and_tolerance():
    x, y = _pair(1)
    result = pairwise([x, y], measure="rbf_cka")
    assert isinstance(result, PairwiseResult)
    assert result.values.dtype == torch.float64 and result.values.shape == (2, 2)
    assert result.status.shape == (2, 2) and (result.status == "ok").all()
    assert result.conv == "flatten" and result.options["threshold"] == 0.8
    assert result.precision == "exact" and result.tolerance == 1e-8
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.values = None  # type: ignore[misc]


def test_numpy_and_torch_inputs_agree():
    x, y = _pair(2)
    assert similarity(x.numpy(), y.numpy(), measure="pwcca") == similarity(x, y, measure="pwcca")
    assert similarity(x.float(), y.float()) == pytest.approx(
        similarity(x.float().double(), y.float().double()), abs=1e-15)


def test_small_rbf_threshold_warns():
    x, y = _pair(3)
    with pytest.warns(UserWarning, match="threshold"):
        similarity(x, y, measure="rbf_cka", threshold=0.2)


def test_fast_precision_states_its_tolerance():
    x, y = _pair(4)
    exact = pairwise([x, y], measure="linear_cka")
    fast = pairwise([x, y], measure="linear_cka", precision="fast")
    assert fast.tolerance == 1e-4
    torch.testing.assert_close(fast.values, exact.values, atol=1e-4, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", KEYS)
def test_cuda_matches_cpu(name):
    gen = torch.Generator().manual_seed(5)
    layers = [torch.randn(64, 6 + k, generator=gen, dtype=torch.float64) for k in range(4)]
    cpu = pairwise(layers, measure=name)
    gpu = pairwise(layers, measure=name, device="cuda")
    torch.testing.assert_close(gpu.values, cpu.values, atol=1e-8, rtol=0, equal_nan=True)
    assert (gpu.status == cpu.status).all()
    fast = pairwise(layers, measure=name, device="cuda", precision="fast")
    torch.testing.assert_close(fast.values, cpu.values, atol=1e-4, rtol=0, equal_nan=True)


def test_a_failing_decomposition_is_a_null_status_not_an_exception(monkeypatch):
    from analysis.similarity import spectra

    def fail(blocks):
        raise torch.linalg.LinAlgError("did not converge")
    monkeypatch.setattr(spectra, "singular_values", fail)
    monkeypatch.setattr("analysis.similarity.nbs.singular_values", fail)
    x, y = _pair(6)
    result = pairwise([x, y], measure="nbs")
    assert (result.status == "linalg_error").all() and torch.isnan(result.values).all()
