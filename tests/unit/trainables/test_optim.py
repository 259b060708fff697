"""trainables.optim.SGD: torch.optim.SGD's values, bit for bit, without its allocations."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.optim import SGD

CONFIGS = {
    "plain": dict(momentum=0.0, weight_decay=0.0),
    "weight_decay": dict(momentum=0.0, weight_decay=1e-3),
    "momentum": dict(momentum=0.9, weight_decay=0.0),
    "momentum_wd": dict(momentum=0.9, weight_decay=5e-4),
    "dampening": dict(momentum=0.9, dampening=0.3, weight_decay=5e-4),
    "nesterov": dict(momentum=0.9, nesterov=True, weight_decay=5e-4),
}


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(13, 11), nn.ReLU(), nn.Linear(11, 7), nn.ReLU(), nn.Linear(7, 3))


def _train(net: nn.Module, optimizer: torch.optim.Optimizer, steps: int, *, frozen: str | None = None) -> None:
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        x, y = torch.randn(32, 13, generator=gen), torch.randint(0, 3, (32,), generator=gen)
        for group in optimizer.param_groups:
            group["lr"] = 0.1 / (1 + step)  # a schedule, as the loop sets one
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        if frozen is not None:
            dict(net.named_parameters())[frozen].grad = None  # a parameter without a gradient is skipped
        optimizer.step()


@pytest.mark.parametrize("foreach", [False, True], ids=["single_tensor", "foreach"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_values_equal_torch_sgd_bit_for_bit(config, foreach):
    ours_net, torch_net = _net(0), _net(0)
    ours = SGD(ours_net.parameters(), lr=0.1, **CONFIGS[config])
    theirs = torch.optim.SGD(torch_net.parameters(), lr=0.1, foreach=foreach, **CONFIGS[config])
    _train(ours_net, ours, 7, frozen="2.bias")
    _train(torch_net, theirs, 7, frozen="2.bias")
    for (name, a), b in zip(ours_net.named_parameters(), torch_net.parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(ours_net[0].weight, _net(0)[0].weight)  # it did train
    ours_state, their_state = ours.state_dict(), theirs.state_dict()
    assert ours_state["state"].keys() == their_state["state"].keys()
    for i, entry in their_state["state"].items():
        for key, value in entry.items():
            assert torch.equal(ours_state["state"][i][key], value), (i, key)


def test_state_dict_moves_between_the_two_classes():
    """A checkpoint written by either optimizer resumes in the other to the same values."""
    first, second = _net(0), _net(0)
    ours = SGD(first.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    _train(first, ours, 3)
    second.load_state_dict(first.state_dict())
    theirs = torch.optim.SGD(second.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))  # torch keeps the loaded tensors: no aliasing
    _train(first, ours, 4)
    _train(second, theirs, 4)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))


def test_the_step_consumes_the_gradient():
    """Documented behaviour: after step(), .grad holds the applied direction (grad + wd * param)."""
    net = nn.Linear(4, 2)
    opt = SGD(net.parameters(), lr=0.1, weight_decay=0.5)
    net.weight.grad = torch.ones_like(net.weight)
    before = net.weight.detach().clone()
    opt.step()
    assert torch.equal(net.weight.grad, torch.ones_like(before).add(before, alpha=0.5))


def test_options_with_other_arithmetic_use_torchs_step():
    net_a, net_b = _net(0), _net(0)
    ours = SGD(net_a.parameters(), lr=0.1, momentum=0.9, maximize=True)
    theirs = torch.optim.SGD(net_b.parameters(), lr=0.1, momentum=0.9, maximize=True)
    _train(net_a, ours, 3)
    _train(net_b, theirs, 3)
    assert all(torch.equal(a, b) for a, b in zip(net_a.parameters(), net_b.parameters()))


def test_a_closure_computes_the_gradients_before_the_step():
    """As torch: the closure runs first and the step uses the gradients it leaves."""
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 13, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    nets, losses = [], []
    for cls in (SGD, torch.optim.SGD):
        net = _net(0)
        opt = cls(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)

        def closure(net=net, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            return loss.detach()

        losses += [opt.step(closure) for _ in range(3)]
        nets.append(net)
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))
    assert [v.item() for v in losses[:3]] == [v.item() for v in losses[3:]]
