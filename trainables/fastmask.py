"""A faster `apply_masks` + `zero_pruned_state`, and gradient masking for the training step.

`masks.apply_masks` and `masks.zero_pruned_state` each rebuild `dict(model.named_parameters())`
(a walk of the whole module tree) and then multiply one tensor at a time by a bool mask (a
dtype conversion per multiply). `MaskApplier` walks the tree once, keeps the parameters and
their masks, already in the parameters' dtype, in lists, and per step multiplies the pruned
parameters and their matching optimizer buffers in one `torch._foreach_mul_`.

The result is bit-identical to `apply_masks(model, masks)` followed by
`zero_pruned_state(optimizer, model, masks=masks)`: multiplying by 1.0 or 0.0 is exact in every
floating dtype, as is multiplying by True/False. Optimizer buffers are looked up per call
(they appear after the first step and are replaced by `load_state_dict`), and a change to the
masks dict (as the gradual schedule makes with `masks.update(...)`) is picked up on the next
call, since the applier compares the dict's tensors by identity.

`mask_grads` is what the training step uses: once pruned weights and their optimizer buffers
are zero, zeroing the pruned gradients before `optimizer.step()` keeps them zero (every update
of SGD with momentum, Nesterov and weight decay, and of Adam and AdamW, of an entry whose
weight, gradient and buffers are zero is zero), so the weights and buffers need not be
multiplied after the step: a third of the multiplies. Surviving entries are multiplied by 1.0,
which is exact, so training is bit-identical to masking after each step (pruned entries may
hold +0.0 where the latter left -0.0). When the masks change (the gradual schedule), the next
call masks weights and buffers once before it masks the gradients.
"""
from __future__ import annotations

import torch
from torch import nn

from trainables.masks import Masks


class MaskApplier:
    """`applier(optimizer)` == `apply_masks(model, masks); zero_pruned_state(optimizer, model, masks=masks)`."""

    def __init__(self, model: nn.Module, masks: Masks):
        self.model, self.masks = model, masks
        self._build()

    def _build(self) -> None:
        params = dict(self.model.named_parameters())
        missing = [name for name in self.masks if name not in params]
        if missing:
            raise KeyError(f"masks name parameters the model does not have: {missing}")
        self._sources = tuple(self.masks.values())  # kept alive, so identity comparisons are sound
        self._params = [params[name] for name in self.masks]
        self._factors = [mask.to(dtype=p.dtype, device=p.device) for mask, p in zip(self._sources, self._params)]

    def _stale(self) -> bool:
        masks = self.masks
        return len(masks) != len(self._sources) or any(a is not b for a, b in zip(masks.values(), self._sources))

    @torch.no_grad()
    def mask_grads(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the gradients of pruned weights (call between `backward` and `step`); masks that
        changed since the last call are first applied to the weights and their buffers."""
        if self._stale():
            self(optimizer)
        grads, factors = [], []
        for param, factor in zip(self._params, self._factors):
            if param.grad is not None:
                grads.append(param.grad)
                factors.append(factor)
        if grads:
            torch._foreach_mul_(grads, factors)

    @torch.no_grad()
    def __call__(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero the pruned weights and, with `optimizer`, their optimizer buffers, in place."""
        if self._stale():
            self._build()
        tensors, factors = list(self._params), list(self._factors)
        if optimizer is not None:
            state = optimizer.state
            for param, factor in zip(self._params, self._factors):
                buffers = state.get(param)
                if not buffers:
                    continue
                for value in buffers.values():
                    if torch.is_tensor(value) and value.shape == factor.shape:
                        tensors.append(value)
                        factors.append(factor if value.dtype == factor.dtype else factor.to(value.dtype))
        if tensors:
            torch._foreach_mul_(tensors, factors)
