"""Sketches as a public API: `sketch_spec` + `sketch` + `pairwise_sketches` give `pairwise`'s
values, the CCA family shares one sketch, sparse pair lists, payloads survive torch.save."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from analysis.similarity import (MEASURES, cka_form, from_payload, pairwise, pairwise_sketches,
                                 sketch, sketch_spec, to_payload)

N = 40


def _reps(seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rep(*shape):
        return torch.relu(torch.randn(N, *shape, generator=gen, dtype=torch.float64) + 0.3)

    fc = [rep(12), rep(7), rep(9)]
    fc[1][:, 2] = 1.0  # a dead unit
    return fc + [torch.ones(N, 5, dtype=torch.float64)], [rep(3, 4, 4), rep(3, 4, 4), rep(5, 2, 2)]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.nan_to_num(nan=-7.0), b.nan_to_num(nan=-7.0))


def _sketches(xs, measure, conv="auto", target=None, **options):
    return [sketch(x, sketch_spec(measure, tuple(x.shape), conv=conv, target=target, **options))
            for x in xs]


@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_sketched_pairs_equal_pairwise_bit_for_bit(measure):
    fc, _ = _reps()
    want = pairwise(fc, measure=measure)
    got = pairwise_sketches(_sketches(fc, measure, form=_form(measure, fc)), measure=measure)
    assert _same(got.values, want.values)
    assert (got.status == want.status).all() and (got.a_dim == want.a_dim).all()
    rect = pairwise(fc[:2], fc[1:], measure=measure)
    form = _form(measure, fc[:2] + fc[1:], pairs=6)
    got = pairwise_sketches(_sketches(fc[:2], measure, form=form), _sketches(fc[1:], measure, form=form),
                            measure=measure)
    assert _same(got.values, rect.values) and (got.b_dim == rect.b_dim).all()


def _form(measure, xs, pairs=None, conv="auto"):
    """The form `pairwise` picks for these arguments (all pairs of xs unless `pairs`)."""
    if measure not in ("linear_cka", "linear_cka_debiased"):
        return None
    count = len(xs)
    return cka_form(measure, [tuple(x.shape) for x in xs],
                    pairs=count * (count + 1) / 2 if pairs is None else pairs, conv=conv)


@pytest.mark.parametrize("measure", ["pwcca", "svcca", "nbs", "linear_cka"])
def test_conv_layers_pooled_to_a_common_target(measure):
    _, conv = _reps(1)
    want = pairwise(conv[:2], conv[2:], measure=measure, conv="spatial")
    small = (2, 2)
    form = _form(measure, conv, 2, conv="spatial")
    rows = _sketches(conv[:2], measure, conv="spatial", target=small, form=form)
    cols = _sketches(conv[2:], measure, conv="spatial", target=small, form=form)
    got = pairwise_sketches(rows, cols, measure=measure, conv="spatial")
    assert _same(got.values, want.values) and got.conv == "spatial"


def test_one_cca_sketch_serves_the_whole_family():
    fc, _ = _reps()
    keys = {sketch_spec(m, (N, 12), **({"variance": 0.9} if m == "svcca" else {})).key
            for m in ("mean_cca", "mean_cca_sq", "svcca", "pwcca", "pwcca_google")}
    assert len(keys) == 1 and keys.pop().startswith("cca-spatial-own-basis-")
    shared = _sketches(fc, "pwcca")
    for measure in ("mean_cca", "svcca", "pwcca_google"):
        assert _same(pairwise_sketches(shared, measure=measure).values, pairwise(fc, measure=measure).values)
    assert sketch_spec("nbs", (N, 5)).key == sketch_spec("procrustes", (N, 5)).key
    assert sketch_spec("rbf_cka", (N, 5)).key != sketch_spec("rbf_cka", (N, 5), threshold=0.5).key


def test_spec_normalises_the_target_and_checks_it():
    assert sketch_spec("pwcca", (N, 3, 4, 4), target=(4, 4)).target is None
    assert sketch_spec("pwcca", (N, 7), target=(2, 2)).target is None
    assert sketch_spec("linear_cka", (N, 3, 4, 4), target=(2, 2)).target is None  # flatten: no pooling
    assert sketch_spec("pwcca", (N, 3, 4, 4), target=(2, 2)).target == (2, 2)
    with pytest.raises(ValueError, match=r"target \(8, 8\) is larger"):
        sketch_spec("pwcca", (N, 3, 4, 4), target=(8, 8))
    with pytest.raises(ValueError, match="invalid form 'features' for measure 'pwcca'"):
        sketch_spec("pwcca", (N, 3), form="features")


def test_sparse_pairs_evaluate_only_what_is_asked():
    fc, _ = _reps(2)
    xs = fc[:3] * 3  # nine representations
    full = pairwise(xs, measure="pwcca")
    sk = _sketches(xs, "pwcca")
    asked = [(0, 0), (0, 1), (0, 2), (3, 4), (5, 8)]
    got = pairwise_sketches(sk, measure="pwcca", pairs=asked)
    for i, j in asked:
        assert got.values[i, j].item() == pytest.approx(full.values[i, j].item(), abs=1e-12)
        assert got.status[i, j] == full.status[i, j]
    mask = np.zeros((9, 9), dtype=bool)
    mask[tuple(zip(*asked))] = True
    assert (got.status[~mask] == "skipped").all() and torch.isnan(got.values[torch.from_numpy(~mask)]).all()
    rect = pairwise_sketches(sk[:2], sk[2:], measure="pwcca", pairs=[(0, 0), (1, 3)])
    assert rect.values[1, 3].item() == pytest.approx(full.values[1, 5].item(), abs=1e-12)


def test_payload_survives_torch_save_with_weights_only():
    fc, _ = _reps(3)
    for measure in ("pwcca", "linear_cka", "nbs", "rbf_cka"):
        built = _sketches(fc, measure)
        loaded = []
        for s in built:
            buffer = io.BytesIO()
            torch.save(to_payload(s), buffer)
            buffer.seek(0)
            loaded.append(from_payload(torch.load(buffer, weights_only=True)))
        assert _same(pairwise_sketches(loaded, measure=measure).values,
                     pairwise_sketches(built, measure=measure).values)
    with pytest.raises(ValueError, match="sketch payload"):
        from_payload({"n": 3})


def test_bad_sketch_arguments_are_value_errors():
    fc, _ = _reps()
    with pytest.raises(ValueError, match="'cca' sketch; measure 'linear_cka' needs kind 'linear_cka'"):
        pairwise_sketches(_sketches(fc, "pwcca"), measure="linear_cka")
    with pytest.raises(ValueError, match="different row counts"):
        pairwise_sketches(_sketches([fc[0], fc[1][:20]], "nbs"), measure="nbs")
    with pytest.raises(ValueError, match="mix the gram and features forms"):
        pairwise_sketches(_sketches(fc[:1], "linear_cka", form="gram")
                          + _sketches(fc[1:2], "linear_cka", form="features"), measure="linear_cka")
    with pytest.raises(ValueError, match=r"pairs\[0\] = \(0, 9\) is out of range"):
        pairwise_sketches(_sketches(fc, "nbs"), measure="nbs", pairs=[(0, 9)])


def test_a_sparse_pair_list_evaluates_its_blocks_not_the_rectangle(monkeypatch):
    import analysis.similarity.api as api

    fc, _ = _reps(4)
    xs = (fc[:3] * 4)[:12]
    sk = _sketches(xs, "nbs")
    cells = []
    real = api.evaluate

    def counting(info, options, *, rows, cols, **kw):
        cells.append(len(rows) * len(cols))
        return real(info, options, rows=rows, cols=cols, **kw)

    monkeypatch.setattr(api, "evaluate", counting)
    # Each "dense" row i pairs with its own three columns: four 1 x 3 blocks, not 4 x 12.
    asked = [(i, 3 * i + k) for i in range(4) for k in range(3)]
    got = pairwise_sketches(sk[:4], sk, measure="nbs", pairs=asked)
    assert sum(cells) == len(asked) == 12
    assert (got.status != "skipped").sum() == 12
    cells.clear()
    pairwise_sketches(sk[:4], sk[:4], measure="nbs", pairs=[(i, j) for i in range(4) for j in range(4) if i != j])
    assert cells == [16]  # dense enough: one call on the whole rectangle
