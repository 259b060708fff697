"""PSP-entropy of every probed unit (Tartaglione et al. 2020): how undecided a unit's on/off
state is within each class, summed over classes.

For probe layer `l` with pre-activation module `model.preactivation_layers[l]` and unit `i`:

    p(i, c) = clamp(#{examples of class c with PSP_i > 0} / #{examples of class c}, 1e-4, 1 - 1e-4)
    H(i, c) = -p log2 p - (1 - p) log2(1 - p)                      (bits)
    H(i)    = sum_c H(i, c)                                         (0 ... num_classes bits)

A unit that is always on or always off has H(i) = num_classes * h(1e-4) ≈ 0.0015 bits per
class; one that is on for exactly half of every class has H(i) = num_classes bits. The clamp
keeps H finite and comparable across probe sets of different sizes. A PSP of exactly 0 (a
unit whose weights and bias were all pruned) counts as off.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

RATE_CLAMP = 1e-4  # p(i, c) is kept in [RATE_CLAMP, 1 - RATE_CLAMP] so that H stays finite


@dataclass(frozen=True)
class NeuronEntropy:
    """PSP-entropy of one probe layer's units.

    Units are the layer's features (Linear), its channels (conv, PSP averaged over spatial
    positions), or with `per_position` its (channel, position) pairs in `flatten` order
    (unit = channel * positions + position).
    """

    layer: str  # probe layer name (named_modules path), e.g. "fc1_relu"
    entropy: np.ndarray  # [units] float64: H(i) = sum over classes of H(i, c), bits
    rates: np.ndarray  # [units, classes] float64: p(i, c) after clamping


@torch.no_grad()
def psp_entropy(model: nn.Module, x: Tensor, *, y: Tensor, num_classes: int, per_position: bool = False,
                batch_size: int = 1024) -> list[NeuronEntropy]:
    """PSP-entropy of every probe layer that has a pre-activation (the logits layer has none).

    x: [n, *input_shape] on the model's device; y: [n] integer labels in [0, num_classes).
    Every class must occur in y: a class without examples has no rate, and silently dropping
    it would make entropies of different probe sets incomparable, so absent classes raise
    `ValueError` naming them. The model is run in eval mode (BatchNorm uses running
    statistics) and its training flag is restored afterwards. Returns one `NeuronEntropy`
    per such probe layer, in `model.probe_layers` order.
    """
    labels = _check_inputs(x, y, num_classes, batch_size)
    probes = [p for p in getattr(model, "probe_layers", ()) if p in getattr(model, "preactivation_layers", {})]
    if not probes:
        raise ValueError("model has no probe layer with a pre-activation; expected `probe_layers` and "
                         "`preactivation_layers` as set by trainables.models")
    counts = _on_counts(model, x, labels, probes, num_classes, per_position, batch_size)
    per_class = torch.bincount(labels, minlength=num_classes).double()
    results = []
    for probe in probes:
        rates = (counts[probe] / per_class[:, None]).T.clamp(RATE_CLAMP, 1 - RATE_CLAMP)
        results.append(NeuronEntropy(layer=probe, entropy=binary_entropy(rates).sum(dim=1).numpy(),
                                     rates=rates.numpy()))
    return results


def binary_entropy(p: Tensor) -> Tensor:
    """Binary entropy in bits, elementwise; p must lie strictly inside (0, 1)."""
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


def neuron_rows(checkpoint_id: str, entropies: list[NeuronEntropy]) -> list[dict]:
    """Rows of the `neurons` table: checkpoint_id, layer, unit, entropy, rates (one per class)."""
    return [
        {"checkpoint_id": checkpoint_id, "layer": e.layer, "unit": unit, "entropy": float(e.entropy[unit]),
         "rates": [float(r) for r in e.rates[unit]]}
        for e in entropies
        for unit in range(len(e.entropy))
    ]


def _check_inputs(x: Tensor, y: Tensor, num_classes: int, batch_size: int) -> Tensor:
    """y as int64 on x's device, after checking shapes, classes and the batch size."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"y must be [n] labels for x: [n, ...]; got x {tuple(x.shape)}, y {tuple(y.shape)}")
    labels = y.to(device=x.device, dtype=torch.long)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = sorted({int(v) for v in labels[(labels < 0) | (labels >= num_classes)].unique()})
        raise ValueError(f"labels {bad} lie outside [0, num_classes={num_classes})")
    absent = [c for c, n in enumerate(torch.bincount(labels, minlength=num_classes).tolist()) if n == 0]
    if absent:
        raise ValueError(f"classes {absent} have no example in the probe set; PSP-entropy needs every "
                         f"one of the {num_classes} classes")
    return labels


def _on_counts(model: nn.Module, x: Tensor, labels: Tensor, probes: list[str], num_classes: int,
               per_position: bool, batch_size: int) -> dict[str, Tensor]:
    """Per probe, [classes, units] float64 counts of examples whose PSP is > 0 (on CPU).

    Each batch's pre-activations are reduced to counts at once, so memory stays at one
    batch of activations whatever the probe set's size.
    """
    modules = dict(model.named_modules())
    targets = {probe: model.preactivation_layers[probe] for probe in probes}
    missing = sorted(path for path in targets.values() if path not in modules)
    if missing:
        raise ValueError(f"pre-activation layers {missing} are not modules of the model")
    outputs: dict[str, Tensor] = {}
    handles = [modules[path].register_forward_hook(lambda _m, _i, out, probe=probe: outputs.__setitem__(probe, out))
               for probe, path in targets.items()]
    counts: dict[str, Tensor] = {}
    was_training = model.training
    try:
        model.eval()
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size])
            onehot = nn.functional.one_hot(labels[start:start + batch_size], num_classes).double()
            for probe in probes:
                on = (_units(outputs.pop(probe), per_position) > 0).double()
                batch_counts = onehot.T @ on  # [classes, units]
                counts[probe] = batch_counts if probe not in counts else counts[probe] + batch_counts
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {probe: c.cpu() for probe, c in counts.items()}


def _units(psp: Tensor, per_position: bool) -> Tensor:
    """[b, features] for Linear outputs; [b, channels, *positions] → [b, channels] (spatial
    mean) or, with per_position, [b, channels * positions] in flatten order."""
    if psp.ndim <= 2:
        return psp.reshape(len(psp), -1)
    if per_position:
        return psp.flatten(start_dim=1)
    return psp.mean(dim=tuple(range(2, psp.ndim)))
