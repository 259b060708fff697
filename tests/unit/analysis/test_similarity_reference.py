"""Every measure against a slow textbook formula per pair (numpy float64), for `similarity`
and every cell of `pairwise`, over generated cases (SIMILARITY.md)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from analysis.similarity import MEASURES, pairwise, similarity

TOL = 1e-8
GOOGLE_TOL = 2e-2  # google's PWCCA depends on SVD signs (SIMILARITY.md)
EPS = np.finfo(np.float64).eps


# ---------------------------------------------------------------- textbook references

def _centre(x):
    return x - x.mean(axis=0)


def _live(x):
    xc = _centre(x)
    keep = np.linalg.norm(xc, axis=0) > x.shape[0] * EPS * np.linalg.norm(x, axis=0)
    return x[:, keep]


def _inv_sqrt(cov):
    """Pseudo-inverse square root of a covariance matrix by its eigen-decomposition."""
    w, v = np.linalg.eigh(cov)
    keep = w > w.max() * max(cov.shape) * EPS * 10
    return (v[:, keep] / np.sqrt(w[keep])) @ v[:, keep].T, int(keep.sum())


def _cca(x, y):
    """Canonical correlations by whitening the covariance matrices (Hotelling)."""
    x, y = _centre(_live(x)), _centre(_live(y))
    n = x.shape[0]
    wx, rx = _inv_sqrt(x.T @ x / (n - 1))
    wy, ry = _inv_sqrt(y.T @ y / (n - 1))
    u, rho, vh = np.linalg.svd(wx @ (x.T @ y / (n - 1)) @ wy)
    k = min(rx, ry)
    return rho[:k], u, vh.T, wx, wy, rx, ry


def _null_if_degenerate(x, y):
    for z in (x, y):
        if _live(z).shape[1] == 0:
            return "constant"
    for z in (x, y):
        if np.linalg.matrix_rank(_centre(_live(z))) >= z.shape[0] - 1:
            return "degenerate"
    return None


def ref_mean_cca(x, y, truncate=None):
    if _null_if_degenerate(x, y):
        return math.nan
    rho = _cca(x, y)[0]
    if truncate is None:
        return min(rho.mean(), 1.0)
    cum = np.cumsum(rho)
    return rho[: int(np.argmax(cum >= truncate * cum[-1])) + 1].mean()


def ref_mean_cca_sq(x, y):
    if _null_if_degenerate(x, y):
        return math.nan
    return min((_cca(x, y)[0] ** 2).mean(), 1.0)


def ref_svcca(x, y, variance=0.99):
    def reduce(z):
        u, s, _ = np.linalg.svd(_centre(z), full_matrices=False)
        energy = np.cumsum(s ** 2)
        k = int(np.argmax(energy >= variance * energy[-1])) + 1
        return u[:, :k] * s[:k]
    if any(_live(z).shape[1] == 0 for z in (x, y)):
        return math.nan
    rx, ry = reduce(x), reduce(y)
    if max(rx.shape[1], ry.shape[1]) >= x.shape[0] - 1:
        return math.nan
    return min(_cca(rx, ry)[0].mean(), 1.0)


def ref_pwcca(x, y):
    """Morcos et al.: alpha_i = sum_j |<h_i, x_j>| with h_i the unit canonical variates of
    the side with fewer dimensions (ties: x)."""
    if _null_if_degenerate(x, y):
        return math.nan
    rho, u, v, wx, wy, rx, ry = _cca(x, y)
    k = rho.shape[0]
    acts, vectors, white = (x, u, wx) if rx <= ry else (y, v, wy)
    acts = _centre(_live(acts))
    h = acts @ white @ vectors[:, :k]
    h /= np.linalg.norm(h, axis=0)
    projections = h.T @ acts
    alpha = np.abs(projections).sum(axis=1)
    for start, stop in _tied_runs(rho):
        # tied correlations: the variates are any basis of their subspace; take the principal
        # axes of the units' projections onto it (basis-independent)
        _, values, right_h = np.linalg.svd(projections[start:stop], full_matrices=False)
        alpha[start:stop] = np.abs(values[:, None] * right_h).sum(axis=1)
    return min((alpha * rho).sum() / alpha.sum(), 1.0)


def _tied_runs(rho, gap=1e-8):
    runs, start = [], 0
    for i in range(1, len(rho) + 1):
        if i == len(rho) or abs(rho[i - 1] - rho[i]) > gap:
            if i - start > 1:
                runs.append((start, i))
            start = i
    return runs


def ref_pwcca_google(x, y, signs="sum"):
    """google/svcca compute_pwcca's path: unwhitened rotation plus unit means, QR.

    signs="sum" fixes each direction's sign as the implementation does (its unit-space
    vector sums to >= 0); signs="numpy" keeps numpy's arbitrary SVD signs."""
    if _null_if_degenerate(x, y):
        return math.nan
    rho, u, v, _, _, _, _ = _cca(x, y)
    k = rho.shape[0]
    xl, yl = _live(x), _live(y)
    acts, dirs = (xl, u) if xl.shape[1] <= yl.shape[1] else (yl, v)
    means = acts.mean(axis=0)
    dirs = dirs[:, :k]
    if signs == "sum":
        dirs = dirs * np.where(dirs.sum(axis=0) >= 0, 1.0, -1.0)
    dirns = _centre(acts) @ dirs + means[:k]
    q, _ = np.linalg.qr(dirns)
    weights = np.abs(q.T @ acts).sum(axis=1)
    return (weights * rho).sum() / weights.sum()


def _hsic_biased(k, l):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def _hsic_unbiased(k, l):
    """Song et al. 2012, eq. 5."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))


def _cka(k, l, hsic):
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def _constant(*zs):
    return any(_live(z).shape[1] == 0 for z in zs)


def ref_linear_cka(x, y):
    if _constant(x, y):
        return math.nan
    return min(max(_cka(x @ x.T, y @ y.T, _hsic_biased), 0.0), 1.0)


def ref_linear_cka_debiased(x, y):
    if _constant(x, y):
        return math.nan
    return _cka(x @ x.T, y @ y.T, _hsic_unbiased)


def ref_linear_cka_minibatch(x, y, batch_size=256):
    if _constant(x, y):
        return math.nan
    sums = np.zeros(3)
    for start in range(0, x.shape[0], batch_size):
        a, b = x[start:start + batch_size], y[start:start + batch_size]
        if a.shape[0] >= 4:
            k, l = a @ a.T, b @ b.T
            sums += [_hsic_unbiased(k, l), _hsic_unbiased(k, k), _hsic_unbiased(l, l)]
    return sums[0] / math.sqrt(sums[1] * sums[2])


def _rbf(x, threshold):
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1)
    return np.exp(-dist / (2 * threshold ** 2 * np.median(dist)))


def ref_rbf_cka(x, y, threshold=0.8):
    if _constant(x, y):
        return math.nan
    return min(max(_cka(_rbf(x, threshold), _rbf(y, threshold), _hsic_biased), 0.0), 1.0)


def ref_nbs(x, y):
    if _constant(x, y):
        return math.nan
    xc, yc = _centre(x), _centre(y)
    return min(np.linalg.norm(xc.T @ yc, "nuc") / (np.linalg.norm(xc) * np.linalg.norm(yc)),
               1.0)


def ref_procrustes(x, y):
    return math.acos(ref_nbs(x, y)) if not _constant(x, y) else math.nan


REFERENCES = {name: globals()[f"ref_{name}"] for name in MEASURES}


# ---------------------------------------------------------------- generated cases

def _rng(seed):
    return np.random.default_rng(seed)


def _correlated(rng, n, p, q, noise):
    base = rng.standard_normal((n, 6))
    x = base @ rng.standard_normal((6, p)) + noise * rng.standard_normal((n, p))
    y = base @ rng.standard_normal((6, q)) + noise * rng.standard_normal((n, q))
    return x, y


def _cases():
    rng = _rng(0)
    n = 48
    cases = {"iid_p_ne_q": (rng.standard_normal((n, 7)), rng.standard_normal((n, 5)))}
    cases["correlated"] = _correlated(rng, n, 8, 6, 0.7)
    x = rng.standard_normal((n, 6))
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    cases["orthogonal_scale_shift"] = (x, 3.0 * x @ q - 2.0)
    cases["invertible"] = (x, x @ (rng.standard_normal((6, 6)) + 2 * np.eye(6)))
    cases["n_lt_p"] = (rng.standard_normal((10, 14)), rng.standard_normal((10, 12)))
    deficient = rng.standard_normal((n, 3)) @ rng.standard_normal((3, 7))
    cases["rank_deficient"] = (deficient, rng.standard_normal((n, 5)))
    relu = np.maximum(_correlated(rng, n, 9, 7, 0.5)[0], 0)
    relu[:, [1, 4]] = 0.0
    other = np.maximum(_correlated(rng, n, 9, 7, 0.5)[1], 0)
    other[:, 2] = 1.5  # a constant, not zero, dead unit
    cases["dead_units"] = (relu, other)
    cases["tiny_scale"] = tuple(1e-6 * z for z in cases["correlated"])
    # ranks 30 + 28 > n: the column spaces meet in 10 dimensions (10 correlations tied at 1)
    cases["intersecting_spans"] = (np.maximum(rng.standard_normal((n, 30)), 0),
                                   rng.standard_normal((n, 28)))
    return cases


CASES = _cases()
MEASURE_OPTIONS = [(name, {}) for name in MEASURES] + [
    ("mean_cca", {"truncate": 0.98}), ("svcca", {"variance": 0.9}),
    ("linear_cka_minibatch", {"batch_size": 16}), ("rbf_cka", {"threshold": 0.5})]


def _tolerance(name, reference, case=None):
    # arccos turns the ~1e-16 round-off of an NBS at 1 into ~1e-8.
    if name == "procrustes" and reference < 1e-6:
        return 1e-6
    # google's path keeps the solver's basis of tied correlations (SIMILARITY.md: its value
    # depends on arbitrary SVD choices), so with ties only its range is defined.
    if name == "pwcca_google" and case == "intersecting_spans":
        return GOOGLE_TOL
    return TOL


def test_pwcca_with_tied_correlations_does_not_depend_on_row_order():
    """Tied canonical correlations leave the variates' basis to the solver; the value must
    not follow it (a permutation of the examples changes the solver's path)."""
    x, y = CASES["intersecting_spans"]
    order = _rng(5).permutation(x.shape[0])
    first = similarity(x, y, measure="pwcca")
    second = similarity(x[order], y[order], measure="pwcca")
    assert not math.isnan(first)
    assert abs(first - second) <= TOL
    assert abs(first - ref_pwcca(x, y)) <= TOL


@pytest.mark.parametrize("case", sorted(CASES))
def test_pwcca_google_within_the_sign_spread_of_numpy_signs(case):
    x, y = CASES[case]
    expected = ref_pwcca_google(x, y, signs="numpy")
    got = similarity(x, y, measure="pwcca_google")
    assert (math.isnan(got) and math.isnan(expected)) or abs(got - expected) <= GOOGLE_TOL


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name,options", MEASURE_OPTIONS,
                         ids=[f"{m}-{o}" for m, o in MEASURE_OPTIONS])
def test_similarity_matches_textbook_formula(case, name, options):
    x, y = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = similarity(x, y, measure=name, **options)
    expected = REFERENCES[name](x, y, **options)
    if math.isnan(expected):
        assert math.isnan(got), (case, name, got)
    else:
        assert abs(got - expected) <= _tolerance(name, expected, case), (case, name, got, expected)


def _conv_cases():
    rng = _rng(1)
    n = 24
    shared = rng.standard_normal((n, 3, 4, 4))
    same_a = np.concatenate([shared, rng.standard_normal((n, 2, 4, 4))], axis=1)
    same_b = shared[:, ::-1] + 0.5 * rng.standard_normal((n, 3, 4, 4))
    small = shared.reshape(n, 3, 2, 2, 2, 2).mean(axis=(3, 5)) + 0.3 * rng.standard_normal(
        (n, 3, 2, 2))
    return {"equal_spatial": (same_a, same_b), "different_spatial": (same_a, small)}


def _reduce(x, mode, target):
    n, c, h, w = x.shape
    if mode == "flatten":
        return x.reshape(n, -1)
    if mode == "avgpool":
        return x.mean(axis=(2, 3))
    th, tw = target
    x = x.reshape(n, c, th, h // th, tw, w // tw).mean(axis=(3, 5))
    return x.transpose(0, 2, 3, 1).reshape(-1, c)


CONV_CASES = _conv_cases()


@pytest.mark.parametrize("case", sorted(CONV_CASES))
@pytest.mark.parametrize("mode", ["flatten", "spatial", "avgpool"])
@pytest.mark.parametrize("name", ["mean_cca", "svcca", "pwcca", "linear_cka",
                                  "linear_cka_debiased", "rbf_cka", "nbs"])
def test_conv_modes_match_textbook_formula(case, mode, name):
    x, y = CONV_CASES[case]
    target = (min(x.shape[2], y.shape[2]), min(x.shape[3], y.shape[3]))
    expected = REFERENCES[name](_reduce(x, mode, target), _reduce(y, mode, target))
    got = similarity(x, y, measure=name, conv=mode)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert abs(got - expected) <= TOL, (got, expected)


def test_spatial_max_rows_keeps_every_kth_row():
    x, y = CONV_CASES["equal_spatial"]
    rows_x, rows_y = _reduce(x, "spatial", (4, 4)), _reduce(y, "spatial", (4, 4))
    stride = math.ceil(rows_x.shape[0] / 100)
    expected = ref_linear_cka(rows_x[::stride], rows_y[::stride])
    got = similarity(x, y, measure="linear_cka", conv="spatial", max_rows=100)
    assert abs(got - expected) <= TOL


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_pairwise_cells_match_textbook_formula(name):
    reps = [CASES["correlated"][0], CASES["correlated"][1], CASES["dead_units"][0][:, :7],
            CASES["invertible"][1], CASES["rank_deficient"][0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pairwise([torch.from_numpy(r) for r in reps], measure=name)
    for i, x in enumerate(reps):
        for j, y in enumerate(reps):
            expected = REFERENCES[name](x, y)
            got = float(result.values[i, j])
            assert abs(got - expected) <= _tolerance(name, expected), (i, j, got, expected)


def test_mean_cca_matches_eigen_decomposition_of_covariances():
    """rho^2 are the eigenvalues of Sxx^-1 Sxy Syy^-1 Syx on well-conditioned data."""
    x, y = CASES["correlated"]
    xc, yc = _centre(x), _centre(y)
    sxy = xc.T @ yc
    product = np.linalg.solve(xc.T @ xc, sxy) @ np.linalg.solve(yc.T @ yc, sxy.T)
    rho2 = np.sort(np.linalg.eigvals(product).real)[::-1][: min(x.shape[1], y.shape[1])]
    assert abs(similarity(x, y, measure="mean_cca") - np.sqrt(rho2.clip(0)).mean()) <= TOL
    assert abs(similarity(x, y, measure="mean_cca_sq") - rho2.mean()) <= TOL


def test_linear_cka_matches_gram_form_to_1e12():
    x, y = CASES["correlated"]
    assert abs(similarity(x, y, measure="linear_cka")
               - _cka(x @ x.T, y @ y.T, _hsic_biased)) <= 1e-12
