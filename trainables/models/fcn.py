"""Deep fully connected network with optional BatchNorm (Pellegrini & Biroli 2021)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from trainables.models.layers import dense_block, flat_features, probed_sequential


def fcn(input_shape: tuple[int, ...], num_classes: int, *,
        widths: Sequence[int] = (1024, 1024, 1024), batchnorm: bool = True) -> nn.Module:
    """Flatten → [Linear → BN → ReLU] per entry of `widths` → Linear to `num_classes`.

    Input `x: [batch, *input_shape]` (any shape), output `[batch, num_classes]`.
    With `widths` of length k the layers are `fc1` … `fc{k}` (probes `fc{i}_relu`,
    pre-activations `fc{i}_bn`, or `fc{i}` without BatchNorm) and the logits `fc{k+1}`.
    """
    widths = _check_widths(widths)
    if not isinstance(batchnorm, bool):
        raise ValueError(f"fcn option 'batchnorm' must be true or false; got {batchnorm!r}")
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    in_features = flat_features(input_shape)
    for i, width in enumerate(widths, start=1):
        layers += dense_block(f"fc{i}", in_features=in_features, out_features=width, batchnorm=batchnorm)
        in_features = width
    layers.append((f"fc{len(widths) + 1}", nn.Linear(in_features, num_classes)))
    return probed_sequential(layers)


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """`widths` as a tuple of positive ints (YAML and JSON deliver lists)."""
    ok = (isinstance(widths, Sequence) and not isinstance(widths, str) and len(widths) > 0
          and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths))
    if not ok:
        raise ValueError(f"fcn option 'widths' must be a non-empty list of positive integers; got {widths!r}")
    return tuple(widths)
