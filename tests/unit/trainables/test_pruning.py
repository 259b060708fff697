"""Magnitude pruning: exact sparsities, scopes, overrides, exclusions, random masks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.masks import apply_masks, dense_masks, mask_digest, prunable_names, sparsity_report
from trainables.pruning import cubic_sparsity, largest_first_by_position, magnitude_masks, random_masks_like
from trainables.specs import PruneSpec


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.BatchNorm1d(30), nn.Linear(30, 7))
    net.output_layer = "3"
    return net


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_sparsity_after_k_rounds_is_exact(scope, rate):
    net = _net()
    spec = PruneSpec(rate=rate, scope=scope, exclude=("bias", "bn"))
    names = prunable_names(net, spec)
    masks = dense_masks(net, names)
    total = sum(m.numel() for m in masks.values())
    for k in range(1, 6):
        masks = magnitude_masks(net, masks, spec=spec, rounds=k)
        apply_masks(net, masks)
        kept = sum(int(m.sum()) for m in masks.values())
        if scope == "global":
            assert kept == round(total * (1 - rate) ** k)
        else:
            for name, m in masks.items():
                assert int(m.sum()) == round(m.numel() * (1 - rate) ** k), name
        assert sparsity_report(net, masks).sparsity == pytest.approx(1 - (1 - rate) ** k, abs=2 / total)


def test_global_removes_smallest_magnitudes_and_nests():
    net = _net()
    spec = PruneSpec(rate=0.3)
    masks = dense_masks(net, prunable_names(net, spec))
    first = magnitude_masks(net, masks, spec=spec, rounds=1)
    second = magnitude_masks(net, first, spec=spec, rounds=2)
    params = dict(net.named_parameters())
    kept = torch.cat([params[n].abs()[first[n]] for n in first])
    gone = torch.cat([params[n].abs()[~first[n]] for n in first])
    assert kept.min() >= gone.max()
    for name in first:  # a pruned weight never comes back
        assert not (second[name] & ~first[name]).any()


def test_exclusions_by_kind_and_pattern():
    net = _net()
    assert prunable_names(net, PruneSpec(exclude=("bias", "bn"))) == ("0.weight", "3.weight")
    assert prunable_names(net, PruneSpec(exclude=("bias", "bn", "output"))) == ("0.weight",)
    assert prunable_names(net, PruneSpec(exclude=("bn", "0.*"))) == ("3.weight", "3.bias")
    with pytest.raises(ValueError, match="leaves no prunable parameter"):
        prunable_names(net, PruneSpec(exclude=("bias", "bn", "*.weight")))


def test_output_layer_at_its_own_rate():
    net = _net()
    spec = PruneSpec(rate=0.2, layer_rates={"output": 0.1})
    masks = magnitude_masks(net, dense_masks(net, prunable_names(net, spec)), spec=spec, rounds=2)
    assert int(masks["3.weight"].sum()) == round(210 * 0.9**2)
    assert int(masks["0.weight"].sum()) == round(600 * 0.8**2)


def test_same_weights_same_masks():
    spec = PruneSpec(rate=0.5)
    a, b = _net(), _net()
    ma = magnitude_masks(a, dense_masks(a, prunable_names(a, spec)), spec=spec, rounds=1)
    mb = magnitude_masks(b, dense_masks(b, prunable_names(b, spec)), spec=spec, rounds=1)
    assert mask_digest(ma) == mask_digest(mb)


def test_random_masks_keep_counts_and_nest():
    net = _net()
    spec = PruneSpec(rate=0.5)
    masks = dense_masks(net, prunable_names(net, spec))
    counts = {"0.weight": 100, "3.weight": 50}
    rnd = random_masks_like(masks, counts, generator=torch.Generator().manual_seed(1))
    assert {n: int(m.sum()) for n, m in rnd.items()} == counts
    again = random_masks_like(rnd, {"0.weight": 10, "3.weight": 5}, generator=torch.Generator().manual_seed(2))
    assert not (again["0.weight"] & ~rnd["0.weight"]).any()


def test_cubic_schedule_endpoints_and_monotone():
    values = [cubic_sparsity(t, start_step=10, end_step=110, final=0.8) for t in range(0, 130)]
    assert values[0] == 0.0 and values[10] == 0.0
    assert values[110] == pytest.approx(0.8) and values[-1] == pytest.approx(0.8)
    assert all(b >= a for a, b in zip(values, values[1:]))


def _stable_sort_keep(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """The textbook rule: the first n_keep of a stable descending sort."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[torch.sort(scores.double(), descending=True, stable=True).indices[:n_keep]] = True
    return keep


@pytest.mark.parametrize("levels", [None, 7, 2], ids=["continuous", "7_values", "2_values"])
def test_selection_equals_the_stable_sort_including_ties(levels):
    gen = torch.Generator().manual_seed(3)
    for n in (1, 2, 17, 1000):
        scores = torch.randn(n, generator=gen).abs()
        if levels is not None:  # many exact ties, so the positional tie-break decides
            scores = torch.randint(0, levels, (n,), generator=gen).float()
        for n_keep in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            got = largest_first_by_position(scores, n_keep)
            assert int(got.sum()) == n_keep
            assert torch.equal(got, _stable_sort_keep(scores, n_keep)), (n, n_keep)


def test_selection_with_nan_scores_follows_the_sort():
    scores = torch.tensor([0.5, float("nan"), 0.1, 0.5, 2.0])
    for n_keep in range(6):
        assert torch.equal(largest_first_by_position(scores, n_keep), _stable_sort_keep(scores, n_keep))
