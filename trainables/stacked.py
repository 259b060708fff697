"""K copies of one architecture as one stacked model, and the masked optimizer step on it.

Parameters and buffers of K modules are stacked along a new leading dimension and trained by one
vmapped forward/backward (`torch.func.functional_call` + `vmap`); BatchNorm running statistics are
stacked buffers too, updated in place per lineage. Each module keeps existing, but its parameters
and buffers become views of its slice of the stacked tensors, so the engine's per-lineage code
(`load_state_dict`, `apply_masks`, magnitude pruning, evaluation) reads and writes the stacked
state directly and nothing needs copying back and forth.

`StackedOptimizer` repeats, op for op, the CPU (single-tensor) arithmetic of `torch.optim.SGD`
(in place, as `trainables.optim.SGD` does) and `torch.optim.Adam` as
`trainables.loop.make_optimizer` configures them, on the stacked tensors, with the pruned
gradients zeroed before the step as `train_epoch` does (pruned weights and buffers are zeroed
once when masks are set or change, and stay zero; see `trainables.fastmask`). Elementwise ops on a
stack give each slice what they give it alone; only the batched matrix products round
differently from one-at-a-time products (about 1e-7 relative per step on CPU).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from trainables.masks import Masks

OptimizerState = dict[str, Any]  # torch.optim's state_dict() layout: {"state": {i: {...}}, "param_groups": [...]}


def structure_of(model: nn.Module) -> nn.Module:
    """A parameter-free copy of `model` (tensors on the meta device) to call functionally."""
    return copy.deepcopy(model).to("meta")


def own_state(model: nn.Module) -> dict[str, Tensor]:
    """`model.state_dict()` with every tensor copied: a view would save the whole stack."""
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


class StackedModel:
    """`models` (same architecture, same device) as one model with a leading lineage dimension.

    params / buffers: name -> `[K, *shape]`; `models[k]`'s tensors are views of slice k.
    `structure`: from `structure_of` (built once, before the modules become views).
    """

    def __init__(self, models: Sequence[nn.Module], structure: nn.Module):
        self.models, self.structure = list(models), structure
        with torch.no_grad():
            self.params = {
                name: torch.stack([m.get_parameter(name).detach() for m in self.models]).requires_grad_()
                for name, _ in structure.named_parameters()
            }
            self.buffers = {
                name: torch.stack([m.get_buffer(name) for m in self.models]) for name, _ in structure.named_buffers()
            }
        for k, model in enumerate(self.models):
            for name, stacked in self.params.items():
                model.get_parameter(name).data = stacked.detach()[k]
            for name, stacked in self.buffers.items():
                path, _, leaf = name.rpartition(".")
                model.get_submodule(path)._buffers[leaf] = stacked[k]
        self._losses = vmap(self._loss)

    def _loss(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(self.structure, (params, buffers), (x,)), y)

    def losses(self, x: Tensor, y: Tensor) -> Tensor:
        """Training-mode mean cross-entropy per lineage: x: [K, B, *input], y: [K, B] -> [K].

        Updates the stacked BatchNorm statistics, each lineage's from its own batch."""
        self.structure.train()
        return self._losses(self.params, self.buffers, x, y)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None


class StackedOptimizer:
    """Masked SGD or Adam over stacked parameters, numerically torch.optim's CPU step.

    group: the hyper-parameters of the optimizer `make_optimizer` builds (its state_dict's one
        param group); states: per lineage its optimizer state (torch.optim layout) or None.
    """

    def __init__(self, params: dict[str, Tensor], *, kind: str, group: dict[str, Any],
                 states: Sequence[OptimizerState | None]):
        if kind not in ("sgd", "adam"):
            raise ValueError(f"optimizer {kind!r} cannot be stacked; expected one of ['adam', 'sgd']")
        unsupported = [k for k in ("maximize", "amsgrad", "decoupled_weight_decay") if group.get(k)]
        if unsupported or group.get("dampening", 0):
            raise ValueError(f"stacked {kind} does not implement {unsupported or ['dampening']}")
        self.params, self.kind, self.group = params, kind, dict(group)
        self.n = len(states)
        keys = ("momentum_buffer",) if kind == "sgd" else ("exp_avg", "exp_avg_sq")
        self.buffers: dict[str, dict[str, Tensor | None]] = {key: {} for key in keys}
        self.steps = [0.0] * self.n  # Adam's per-lineage step count
        for i, name in enumerate(params):
            per = [(s or {}).get("state", {}).get(i) for s in states]
            if all(p is None for p in per):
                for key in keys:
                    self.buffers[key][name] = None
                continue
            if any(p is None for p in per):
                raise ValueError(f"optimizer state of {name!r} exists for some lineages of the stack only")
            for key in keys:
                self.buffers[key][name] = torch.stack([p[key] for p in per]).to(params[name])
            if kind == "adam":
                self.steps = [float(p["step"]) for p in per]
        self.factors: dict[str, Tensor] = {}
        self._sources: list[tuple[Tensor, ...]] = []

    # -- masks --------------------------------------------------------------------------------
    def set_masks(self, masks: Sequence[Masks]) -> None:
        """Per lineage its masks (the same names for all). Pruned weights and their buffers are zeroed
        here; each step then zeroes their gradients, which keeps them zero (see `trainables.fastmask`)."""
        names = list(masks[0])
        self.factors = {n: torch.stack([m[n] for m in masks]).to(self.params[n].dtype) for n in names}
        self._sources = [tuple(m.values()) for m in masks]
        self.apply_masks()

    def sync_masks(self, k: int, masks: Masks) -> None:
        """Pick up lineage k's masks after a change in place of its dict (the gradual schedule),
        zeroing its newly pruned weights and their buffers."""
        if any(a is not b for a, b in zip(masks.values(), self._sources[k])):
            with torch.no_grad():
                for name, mask in masks.items():
                    self.factors[name][k].copy_(mask)
            self.apply_masks(k)
            self._sources[k] = tuple(masks.values())

    @torch.no_grad()
    def apply_masks(self, k: int | None = None) -> None:
        """`apply_masks` + `zero_pruned_state` of every lineage (or of lineage `k` only):
        multiply by 1.0 or 0.0, exact."""
        at = slice(None) if k is None else k
        for name, factor in self.factors.items():
            self.params[name][at].mul_(factor[at])
            for buffers in self.buffers.values():
                if buffers[name] is not None:
                    buffers[name][at].mul_(factor[at])

    # -- step ---------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, lrs: Sequence[float]) -> None:
        """One masked optimizer step of every lineage, lineage k at learning rate lrs[k]."""
        if len(lrs) != self.n:
            raise ValueError(f"lrs has {len(lrs)} entries; the stack has {self.n} lineages")
        if self.kind == "adam":
            self.steps = [s + 1 for s in self.steps]
        for name, p in self.params.items():
            if p.grad is None:
                continue
            factor = self.factors.get(name)
            if factor is not None:
                p.grad.mul_(factor)  # pruned weights and buffers are zero and stay so
            if self.kind == "sgd":
                self._sgd(name, p, lrs)
            else:
                self._adam(name, p, lrs)

    def _sgd(self, name: str, p: Tensor, lrs: Sequence[float]) -> None:
        g = self.group
        grad = p.grad  # consumed in place, as trainables.optim.SGD does
        if g["weight_decay"] != 0:
            grad.add_(p, alpha=g["weight_decay"])
        if g["momentum"] != 0:
            buf = self.buffers["momentum_buffer"][name]
            if buf is None:
                buf = self.buffers["momentum_buffer"][name] = grad.detach().clone()
            else:
                buf.mul_(g["momentum"]).add_(grad, alpha=1 - g["dampening"])
            grad = grad.add_(buf, alpha=g["momentum"]) if g["nesterov"] else buf
        for sl, lr in _slices(lrs):
            p[sl].add_(grad[sl], alpha=-lr)

    def _adam(self, name: str, p: Tensor, lrs: Sequence[float]) -> None:
        g = self.group
        beta1, beta2 = g["betas"]
        grad = p.grad
        if g["weight_decay"] != 0:
            grad = grad.add(p, alpha=g["weight_decay"])
        exp_avg, exp_avg_sq = self.buffers["exp_avg"][name], self.buffers["exp_avg_sq"][name]
        if exp_avg is None:
            exp_avg = self.buffers["exp_avg"][name] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avg_sq = self.buffers["exp_avg_sq"][name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        for sl, (lr, step) in _slices(list(zip(lrs, self.steps))):
            step_size = lr / (1 - beta1**step)
            bias_correction2_sqrt = (1 - beta2**step) ** 0.5
            denom = (exp_avg_sq[sl].sqrt() / bias_correction2_sqrt).add_(g["eps"])
            p[sl].addcdiv_(exp_avg[sl], denom, value=-step_size)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self, k: int, lr: float) -> OptimizerState:
        """Lineage k's state in torch.optim's layout (copies), its group's lr set to `lr`."""
        state: dict[int, dict[str, Tensor]] = {}
        for i, name in enumerate(self.params):
            entry = {key: buffers[name][k].clone() for key, buffers in self.buffers.items()
                     if buffers[name] is not None}
            if entry:
                if self.kind == "adam":
                    entry = {"step": torch.tensor(self.steps[k], dtype=_scalar_dtype()), **entry}
                state[i] = entry
        group = {**self.group, "lr": lr, "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}


def _slices(values: Sequence[Any]) -> list[tuple[Any, Any]]:
    """(index, value) pairs: the whole stack when all lineages share the value, else one per lineage."""
    if all(v == values[0] for v in values):
        return [(slice(None), values[0])]
    return [(k, v) for k, v in enumerate(values)]


def _scalar_dtype() -> torch.dtype:
    # torch.optim keeps Adam's step count as a float64 scalar only when that is the default dtype.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
