"""The CPU LAPACK backend of the per-pair decompositions: both backends agree, the choice
can be forced, and a bad choice is a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.similarity import pairwise, spectra


@pytest.fixture
def backend(monkeypatch):
    def use(name):
        monkeypatch.setenv(spectra.BACKEND_VARIABLE, name)
        spectra.cpu_backend.cache_clear()
        return spectra.cpu_backend()
    yield use
    spectra.cpu_backend.cache_clear()


def _blocks(seed=0, shape=(5, 12, 7)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(5, 12, 7), (5, 7, 12), (3, 9, 9)])
def test_backends_agree_with_the_svd(backend, shape):
    blocks = _blocks(shape=shape)
    expected = torch.linalg.svdvals(blocks)
    for name in ("torch", "numpy"):
        assert backend(name) == name
        torch.testing.assert_close(spectra.singular_values(blocks), expected,
                                   atol=1e-12, rtol=0)
        for left in (True, False):
            vectors, values = spectra.side_vectors(blocks, left=left)
            torch.testing.assert_close(values, expected, atol=1e-12, rtol=0)
            u, _, vh = torch.linalg.svd(blocks, full_matrices=False)
            reference = u if left else vh.mT
            # singular vectors up to sign: |<v_i, w_i>| = 1
            overlap = (vectors * reference).sum(dim=-2).abs()
            torch.testing.assert_close(overlap, torch.ones_like(overlap), atol=1e-9, rtol=0)


@pytest.mark.parametrize("shape", [(30, 12), (12, 30)])
def test_thin_svd_agrees_on_both_backends(backend, shape):
    matrix = _blocks(shape=(1, *shape))[0]
    for name in ("torch", "numpy"):
        backend(name)
        u, s, vh = spectra.thin_svd(matrix)
        assert u.shape == (shape[0], min(shape)) and vh.shape == (min(shape), shape[1])
        torch.testing.assert_close((u * s) @ vh, matrix, atol=1e-12, rtol=0)
        torch.testing.assert_close(s, torch.linalg.svdvals(matrix), atol=1e-12, rtol=0)


def test_pairwise_is_the_same_on_both_backends(backend):
    gen = torch.Generator().manual_seed(3)
    # one wider than n: NBS sketches it by a thin SVD
    layers = [torch.randn(40, 6 + k, generator=gen, dtype=torch.float64) for k in range(4)]
    layers.append(torch.randn(40, 64, generator=gen, dtype=torch.float64))
    results = {}
    for name in ("torch", "numpy"):
        backend(name)
        results[name] = {m: pairwise(layers, measure=m)
                         for m in ("nbs", "mean_cca", "pwcca", "svcca", "pwcca_google")}
    for measure, result in results["torch"].items():
        other = results["numpy"][measure]
        torch.testing.assert_close(other.values, result.values, atol=1e-12, rtol=0, equal_nan=True)
        assert (other.status == result.status).all()
    assert not torch.isnan(results["numpy"]["nbs"].values).any()


def test_rank_deficient_blocks_fall_back_to_the_svd_on_both_backends(backend):
    blocks = _blocks(shape=(4, 10, 3)) @ _blocks(1, (4, 3, 8))  # rank 3 of 8
    for name in ("torch", "numpy"):
        backend(name)
        values = spectra.singular_values(blocks)
        torch.testing.assert_close(values, torch.linalg.svdvals(blocks), atol=1e-12, rtol=0)
        assert (values[:, 3:] < 1e-12).all()


def test_numpy_non_convergence_is_torch_linalg_error(backend, monkeypatch):
    backend("numpy")

    def fail(_):
        raise np.linalg.LinAlgError("Eigenvalues did not converge")
    monkeypatch.setattr(np.linalg, "eigvalsh", fail)
    with pytest.raises(torch.linalg.LinAlgError, match="did not converge"):
        spectra.singular_values(_blocks())


def test_auto_picks_numpy_only_for_mkl_off_intel(backend, monkeypatch):
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    monkeypatch.setattr(spectra, "_numpy_blas", lambda: "scipy-openblas")
    monkeypatch.setattr(spectra, "_cpu_vendor", lambda: "AuthenticAMD")
    assert backend("auto") == "numpy"
    monkeypatch.setattr(spectra, "_cpu_vendor", lambda: "GenuineIntel")
    assert backend("auto") == "torch"
    monkeypatch.setattr(spectra, "_cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(spectra, "_numpy_blas", lambda: "mkl-sdl")
    assert backend("auto") == "torch"


def test_a_bad_choice_names_the_variable_and_the_options(backend):
    with pytest.raises(ValueError, match=r"IMPSWEEP_CPU_LAPACK='lapacke'.*auto, torch, numpy"):
        backend("lapacke")
