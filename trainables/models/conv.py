"""Conv-2, Conv-4 and Conv-6 of Frankle & Carbin 2019 (scaled-down VGG for CIFAR-10)."""

from __future__ import annotations

from torch import nn

from trainables.models.layers import conv_stack, dense_block, probed_sequential

_CFGS: dict[str, list[int | str]] = {
    "conv2": [64, 64, "M"],
    "conv4": [64, 64, "M", 128, 128, "M"],
    "conv6": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
}


def _conv_net(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Pairs of 3×3 same-padding convs, each pair followed by 2×2 max-pooling, then FC 256-256.

    Input `x: [batch, channels, height, width]`, output `[batch, num_classes]`. No
    BatchNorm, biases kept, as in the paper. Probes: every `conv{i}_relu`, `fc1_relu`,
    `fc2_relu`, and the logits `fc3`.
    """
    features, channels, height, width = conv_stack(name, _CFGS[name], input_shape=input_shape, batchnorm=False)
    return probed_sequential([
        *features,
        ("flatten", nn.Flatten()),
        *dense_block("fc1", in_features=channels * height * width, out_features=256, batchnorm=False),
        *dense_block("fc2", in_features=256, out_features=256, batchnorm=False),
        ("fc3", nn.Linear(256, num_classes)),
    ])


def conv2(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Conv-2: conv 64, 64 | pool | FC 256, 256, `num_classes` (4.3 M parameters on CIFAR-10)."""
    return _conv_net("conv2", input_shape, num_classes)


def conv4(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Conv-4: conv 64, 64 | pool | 128, 128 | pool | FC 256, 256, `num_classes` (2.4 M on CIFAR-10)."""
    return _conv_net("conv4", input_shape, num_classes)


def conv6(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Conv-6: conv 64, 64 | 128, 128 | 256, 256, each pair pooled, then FC 256, 256.

    2.3 M parameters on CIFAR-10 as built here (the paper's Table 1 lists 1.7 M).
    """
    return _conv_net("conv6", input_shape, num_classes)
