"""Sharpness: power iteration against the exact masked Hessian, masks, restoration, determinism."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from analysis.sharpness import sharpness
from trainables.masks import apply_masks


def _trained_net(masks: dict[str, torch.Tensor]) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 31-parameter tanh net, trained a little within `masks` (as a checkpoint would be), so
    that the top eigenvalue dominates. Plain gradient steps: torch.optim costs seconds to import."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.arange(3).repeat(6)[:16]
    for _ in range(50):
        grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
        with torch.no_grad():
            for param, grad in zip(net.parameters(), grads):
                param -= 0.5 * grad
        apply_masks(net, masks)
    return net, x, y


def _masks(density: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"0.weight": torch.rand(4, 3, generator=g) < density, "2.weight": torch.rand(3, 4, generator=g) < density}


def _exact_eigenvalues(net: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    """Eigenvalues of the full Hessian of the masked loss, restricted to the unpruned coordinates."""
    named = [(n, p.shape) for n, p in net.named_parameters()]
    keep = torch.cat([masks[n].double().ravel() if n in masks else torch.ones(s.numel(), dtype=torch.float64)
                      for n, s in named])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts = torch.split(theta * keep, [s.numel() for _, s in named])
        return F.cross_entropy(functional_call(net, {n: t.view(s) for (n, s), t in zip(named, parts)}, (x,)), y)

    theta = torch.cat([p.detach().ravel() for p in net.parameters()])
    hessian = torch.autograd.functional.hessian(loss, theta)
    kept = keep.bool()
    return torch.linalg.eigvalsh(hessian[kept][:, kept])


@pytest.mark.parametrize("density", [0.6, 1.0])
def test_power_iteration_finds_the_top_eigenvalue_of_the_masked_hessian(density):
    masks = _masks(density)
    net, x, y = _trained_net(masks)
    eigenvalues = _exact_eigenvalues(net, masks, x, y)
    expected = eigenvalues[eigenvalues.abs().argmax()]
    assert expected > 0  # near a minimum the largest-magnitude eigenvalue is the top one
    result = sharpness(net, masks, x=x, y=y, n_iterations=60)
    assert result.hessian_top_eig == pytest.approx(float(expected), rel=1e-4)
    assert result.loss == pytest.approx(F.cross_entropy(net(x), y).item(), rel=1e-12)
    assert result.n_iterations == 60 and result.epsilon == 0.01


def test_pruned_entries_stay_zero_and_weights_are_restored_bit_exactly():
    masks = _masks(0.6)
    net, x, y = _trained_net(masks)
    reference = sharpness(net, masks, x=x, y=y, n_iterations=10)
    with torch.no_grad():  # garbage in the pruned entries must not reach the loss, Hessian or draws
        for name, param in net.named_parameters():
            if name in masks:
                param[~masks[name]] = 5.0
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert sharpness(net, masks, x=x, y=y, n_iterations=10) == reference
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_same_seed_same_result_and_zero_epsilon_zero_increase():
    masks = _masks(0.6)
    net, x, y = _trained_net(masks)
    a = sharpness(net, masks, x=x, y=y, n_iterations=5, seed=3)
    assert sharpness(net, masks, x=x, y=y, n_iterations=5, seed=3) == a
    assert sharpness(net, masks, x=x, y=y, n_iterations=5, seed=4).perturbed_loss_increase != a.perturbed_loss_increase
    assert sharpness(net, masks, x=x, y=y, n_iterations=1, epsilon=0.0).perturbed_loss_increase == 0.0


def test_batchnorm_runs_in_eval_mode_and_mode_is_restored():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    net.train()
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    stats = net[1].running_mean.clone()
    result = sharpness(net, {"0.weight": torch.ones(4, 3, dtype=torch.bool)}, x=x, y=y, n_iterations=3)
    assert net.training and torch.equal(net[1].running_mean, stats)
    net.eval()
    assert result.loss == pytest.approx(F.cross_entropy(net(x), y).item())


def test_bad_arguments_are_named():
    net, x, y = _trained_net({})
    with pytest.raises(ValueError, match="'1.weight'"):
        sharpness(net, {"1.weight": torch.ones(4, 3, dtype=torch.bool)}, x=x, y=y)
    with pytest.raises(ValueError, match=r"mask '0.weight' has shape \(3, 4\)"):
        sharpness(net, {"0.weight": torch.ones(3, 4, dtype=torch.bool)}, x=x, y=y)
    with pytest.raises(ValueError, match="n_iterations"):
        sharpness(net, {}, x=x, y=y, n_iterations=0)
    with pytest.raises(ValueError, match="epsilon"):
        sharpness(net, {}, x=x, y=y, epsilon=-1.0)
