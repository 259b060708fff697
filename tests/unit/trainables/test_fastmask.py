"""MaskApplier: bit-identical to apply_masks + zero_pruned_state, and follows mask/state changes."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.fastmask import MaskApplier
from trainables.masks import apply_masks, dense_masks, prunable_names, zero_pruned_state
from trainables.pruning import magnitude_masks
from trainables.specs import PruneSpec

SPEC = PruneSpec(rate=0.5, exclude=("bias", "bn"))


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.BatchNorm1d(16), nn.Linear(16, 5))
    net.output_layer = "3"
    return net


def _masks(net: nn.Module, rounds: float = 2) -> dict[str, torch.Tensor]:
    return magnitude_masks(net, dense_masks(net, prunable_names(net, SPEC)), spec=SPEC, rounds=rounds)


def _optimizer(net: nn.Module, kind: str) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(net.parameters(), lr=0.01, weight_decay=1e-3)
    return torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=kind == "nesterov", weight_decay=1e-3)


def _step(net, optimizer, seed):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 12, generator=gen), torch.randint(0, 5, (8,), generator=gen)
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    optimizer.step()


def _same(a: nn.Module, opt_a, b: nn.Module, opt_b) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), (name, key)


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam"])
def test_bit_identical_to_apply_masks_and_zero_pruned_state(kind):
    ref = _net()
    masks = _masks(ref)
    apply_masks(ref, masks)
    fast = copy.deepcopy(ref)
    opt_ref, opt_fast = _optimizer(ref, kind), _optimizer(fast, kind)
    applier = MaskApplier(fast, masks)
    for seed in range(5):
        _step(ref, opt_ref, seed)
        apply_masks(ref, masks)
        zero_pruned_state(opt_ref, ref, masks=masks)
        _step(fast, opt_fast, seed)
        applier(opt_fast)
        _same(ref, opt_ref, fast, opt_fast)
    for name, param in fast.named_parameters():
        if name in masks:
            assert not param[~masks[name]].any(), name
            for value in opt_fast.state[param].values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    assert not value[~masks[name]].any(), (name, "buffer")


def test_zeroes_the_buffers_it_must_and_leaves_the_rest():
    net = _net()
    masks = _masks(net)
    opt = _optimizer(net, "sgd")
    _step(net, opt, 0)  # weights and momentum of pruned entries are now non-zero
    pruned_before = {n: p.detach().clone() for n, p in net.named_parameters()}
    MaskApplier(net, masks)(opt)
    for name, param in net.named_parameters():
        buf = opt.state[param]["momentum_buffer"]
        if name in masks:
            assert torch.equal(param, pruned_before[name] * masks[name])
            assert not buf[~masks[name]].any() and buf[masks[name]].any()
        else:  # biases and norm parameters are untouched
            assert torch.equal(param, pruned_before[name])
            assert buf.any()


def test_follows_replaced_masks_and_reloaded_optimizer_state():
    net = _net()
    masks = _masks(net, rounds=1)
    opt = _optimizer(net, "sgd")
    applier = MaskApplier(net, masks)
    _step(net, opt, 0)
    applier(opt)
    masks.update(_masks(net, rounds=3))  # what the gradual schedule does mid-level
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # new buffer tensors
    _step(net, opt, 1)
    applier(opt)
    for name, param in net.named_parameters():
        if name in masks:
            assert not param[~masks[name]].any(), name
            assert not opt.state[param]["momentum_buffer"][~masks[name]].any(), name


def test_without_optimizer_or_state_and_with_unknown_names():
    net = _net()
    masks = _masks(net)
    MaskApplier(net, masks)()  # weights only
    MaskApplier(net, masks)(_optimizer(net, "sgd"))  # no buffers before the first step
    for name, param in net.named_parameters():
        if name in masks:
            assert not param[~masks[name]].any()
    with pytest.raises(KeyError, match="nope.weight"):
        MaskApplier(net, {"nope.weight": torch.ones(3, dtype=torch.bool)})


def test_dense_masks_change_nothing():
    net = _net()
    before = copy.deepcopy(net.state_dict())
    MaskApplier(net, dense_masks(net, prunable_names(net, SPEC)))()
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def _masked_step(net, optimizer, seed, applier):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 12, generator=gen), torch.randint(0, 5, (8,), generator=gen)
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    applier.mask_grads(optimizer)
    optimizer.step()


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam", "adamw"])
def test_masking_gradients_equals_masking_after_each_step(kind):
    """Zeroing pruned gradients before the step leaves weights and buffers exactly as zeroing
    weights and buffers after it, including across a mask change (the gradual schedule)."""
    ref = _net()
    masks = _masks(ref, rounds=1)
    apply_masks(ref, masks)
    fast = copy.deepcopy(ref)
    make = (lambda n: torch.optim.AdamW(n.parameters(), lr=0.01, weight_decay=0.1)) \
        if kind == "adamw" else (lambda n: _optimizer(n, kind))
    opt_ref, opt_fast = make(ref), make(fast)
    fast_masks = dict(masks)
    applier = MaskApplier(fast, fast_masks)
    for seed in range(12):
        if seed == 6:  # prune further mid-training, as the gradual schedule does
            more = _masks(ref, rounds=3)
            masks.update(more)
            apply_masks(ref, masks)
            fast_masks.update({name: mask.clone() for name, mask in more.items()})
            apply_masks(fast, fast_masks)  # weights only, as the schedule does; not the buffers
        _step(ref, opt_ref, seed)
        apply_masks(ref, masks)
        zero_pruned_state(opt_ref, ref, masks=masks)
        _masked_step(fast, opt_fast, seed, applier)
    _same(ref, opt_ref, fast, opt_fast)
    pruned = ~masks["0.weight"]
    assert bool(pruned.any()) and bool((fast[0].weight[pruned] == 0).all())
