"""VGG with BatchNorm for small images (CIFAR VGG-11/16/19) and the compact VGG used for SVHN."""

from __future__ import annotations

from torch import nn

from trainables.models.layers import conv_stack, probed_sequential

_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    "vgg_svhn": [32, 32, "M", 64, 64, "M", 128, 128, "M", 256],
}


def _vgg(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """3×3 conv → BN → ReLU blocks with max-pooling per `_CFGS[name]`, global average pooling, one linear.

    Input `x: [batch, channels, height, width]`, output `[batch, num_classes]`. On 32×32
    inputs the CIFAR configurations end at 1×1, where the average pooling changes nothing
    (the usual CIFAR VGG); on other sizes it makes the classifier independent of the input
    size. Conv biases are dropped (BN follows). Probes: every `conv{i}_relu` (pre-activation
    `conv{i}_bn`) and the logits `fc`.
    """
    features, channels, _, _ = conv_stack(name, _CFGS[name], input_shape=input_shape, batchnorm=True)
    return probed_sequential([
        *features,
        ("avgpool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(channels, num_classes)),
    ])


def vgg11(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """VGG-11 (configuration A) with BatchNorm: 8 convs, 9.2 M parameters on CIFAR-10."""
    return _vgg("vgg11", input_shape, num_classes)


def vgg16(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """VGG-16 (configuration D) with BatchNorm: 13 convs, 14.7 M parameters on CIFAR-10."""
    return _vgg("vgg16", input_shape, num_classes)


def vgg19(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """VGG-19 (configuration E) with BatchNorm: 16 convs, 20.0 M parameters on CIFAR-10."""
    return _vgg("vgg19", input_shape, num_classes)


def vgg_svhn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Compact VGG: conv 32, 32 | 64, 64 | 128, 128 (max-pool after each pair) | 256, GAP, linear."""
    return _vgg("vgg_svhn", input_shape, num_classes)
