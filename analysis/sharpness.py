"""Sharpness of a checkpoint's minimum: the top Hessian eigenvalue of the training loss and the
mean loss increase under small random weight perturbations, both within the pruned subspace.

The loss is the mean cross-entropy on one fixed batch, with the model in eval mode (BatchNorm
uses its running statistics), so that it is a deterministic function of the weights. The
weights are every trainable parameter; a masked parameter enters as `w * mask`, so its pruned
entries are fixed at zero and neither the Hessian nor the perturbations ever move them.
Parameters without a mask (biases, BatchNorm scales and shifts) are never pruned and take part
in full. The model's own tensors are never written: perturbed weights go through
`torch.func.functional_call`, so the model is left bit-identical.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Weights = dict[str, Tensor]  # parameter name -> tensor of that parameter's shape


@dataclass(frozen=True)
class Sharpness:
    hessian_top_eig: float  # Rayleigh quotient v.Hv of the power iteration's final unit vector v
    perturbed_loss_increase: float  # mean over draws of loss(w + delta) - loss(w)
    epsilon: float  # relative size of the perturbations
    n_iterations: int  # power iterations run (fewer than asked only if the Hessian vanishes)
    loss: float  # loss(w): mean cross-entropy on the batch


def sharpness(model: nn.Module, masks: dict[str, Tensor], *, x: Tensor, y: Tensor, epsilon: float = 1e-2,
              n_iterations: int = 20, n_perturbations: int = 5, seed: int = 0) -> Sharpness:
    """Sharpness of `model` at its weights, restricted to the unpruned ones.

    x: [n, *input_shape], y: [n] class labels, both on the model's device; masks: parameter
    name -> bool tensor of its shape (True = kept). Randomness comes from one CPU
    `torch.Generator` seeded with `seed`: first the power iteration's start, then the draws.

    hessian_top_eig: power iteration v <- Hv / |Hv| from a masked standard normal start, with
    Hessian-vector products by double backprop. It converges to the eigenvalue of largest
    magnitude, which at a trained minimum is the top (positive) one.
    perturbed_loss_increase: mean over `n_perturbations` draws of loss(w + delta) - loss(w),
    delta = epsilon * |w| * g * mask with g standard normal (a relative perturbation, so that
    layers of different scale are perturbed alike).
    """
    keep = _check(model, masks, x, y, epsilon, n_iterations, n_perturbations)
    weights = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    try:
        model.eval()
        top, iterations = _top_eigenvalue(model, weights, keep, x, y, generator, n_iterations)
        loss, increase = _perturbed_increase(model, weights, keep, x, y, generator, epsilon, n_perturbations)
    finally:
        model.train(was_training)
    return Sharpness(hessian_top_eig=top, perturbed_loss_increase=increase, epsilon=float(epsilon),
                     n_iterations=iterations, loss=loss)


def _loss(model: nn.Module, weights: Weights, keep: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy with masked weights multiplied by their masks."""
    masked = {name: w * keep[name] if name in keep else w for name, w in weights.items()}
    return F.cross_entropy(functional_call(model, masked, (x,)), y)


def _top_eigenvalue(model: nn.Module, weights: Weights, keep: dict[str, Tensor], x: Tensor, y: Tensor,
                    generator: torch.Generator, n_iterations: int) -> tuple[float, int]:
    """(largest-magnitude Hessian eigenvalue in the unpruned subspace, iterations run)."""
    leaves = {name: w.detach().requires_grad_(True) for name, w in weights.items()}
    loss = _loss(model, leaves, keep, x, y)
    grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True, allow_unused=True)
    # A gradient that does not depend on the weights (or a weight the loss ignores) has a zero
    # Hessian block: leave it out of the products.
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    names = [list(leaves)[i] for i in live]
    vector = _normalised(_masked(_normal_like(leaves, names, generator), keep))
    eigenvalue, iteration = 0.0, 0
    for iteration in range(1, n_iterations + 1):
        products = torch.autograd.grad([grads[i] for i in live], [leaves[n] for n in names],
                                       grad_outputs=[vector[n] for n in names], retain_graph=True)
        product = _masked(dict(zip(names, products)), keep)
        eigenvalue = float(sum((product[n] * vector[n]).sum() for n in names))
        if _norm(product) == 0:  # the Hessian vanishes on this subspace: 0 is its only eigenvalue
            break
        vector = _normalised(product)
    return eigenvalue, iteration


@torch.no_grad()
def _perturbed_increase(model: nn.Module, weights: Weights, keep: dict[str, Tensor], x: Tensor, y: Tensor,
                        generator: torch.Generator, epsilon: float, n_perturbations: int) -> tuple[float, float]:
    """(loss(w), mean over `n_perturbations` draws of loss(w + epsilon * |w| * g * mask) - loss(w)).

    Both losses take the same no-grad path, so that epsilon = 0 gives exactly 0.
    """
    loss = float(_loss(model, weights, keep, x, y))
    total = 0.0
    for _ in range(n_perturbations):
        noise = _masked(_normal_like(weights, list(weights), generator), keep)
        perturbed = {n: w + epsilon * w.abs() * noise[n] for n, w in weights.items()}
        total += float(_loss(model, perturbed, keep, x, y)) - loss
    return loss, total / n_perturbations


def _normal_like(weights: Weights, names: list[str], generator: torch.Generator) -> Weights:
    """Standard normal tensors for `names`, drawn on the CPU so that every device draws the same."""
    return {n: torch.randn(weights[n].shape, generator=generator, dtype=torch.float64)
            .to(device=weights[n].device, dtype=weights[n].dtype) for n in names}


def _masked(vector: Weights, keep: dict[str, Tensor]) -> Weights:
    return {n: v * keep[n] if n in keep else v for n, v in vector.items()}


def _norm(vector: Weights) -> float:
    return math.sqrt(sum(float((v * v).sum()) for v in vector.values()))


def _normalised(vector: Weights) -> Weights:
    norm = _norm(vector)
    return {n: v / norm for n, v in vector.items()} if norm > 0 else vector


def _check(model: nn.Module, masks: dict[str, Tensor], x: Tensor, y: Tensor, epsilon: float,
           n_iterations: int, n_perturbations: int) -> dict[str, Tensor]:
    """The masks as 0/1 tensors of each parameter's dtype and device, after checking the arguments."""
    params = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise ValueError(f"masks name {unknown}, which are not parameters of the model; have {sorted(params)}")
    for name, mask in masks.items():
        if tuple(mask.shape) != tuple(params[name].shape):
            raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}; the parameter has "
                             f"{tuple(params[name].shape)}")
    if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or not 0 <= epsilon < math.inf:
        raise ValueError(f"epsilon must be a finite number >= 0; got {epsilon!r}")
    for label, value in (("n_iterations", n_iterations), ("n_perturbations", n_perturbations)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a positive integer; got {value!r}")
    if y.ndim != 1 or len(y) != len(x) or len(x) == 0:
        raise ValueError(f"x: [n, ...] and y: [n] must be a non-empty batch; got x {tuple(x.shape)}, "
                         f"y {tuple(y.shape)}")
    return {name: mask.to(device=params[name].device, dtype=params[name].dtype) for name, mask in masks.items()
            if params[name].requires_grad}
