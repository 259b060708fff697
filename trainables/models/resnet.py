"""ResNets for small images: ResNet-20/32/56 (He et al. 2016, CIFAR) and the CIFAR ResNet-18."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from trainables.models.layers import annotate, image_shape, relu


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by `stride`, zero-pad new channels; no parameters.

    `x: [b, c_in, h, w]` → `[b, c_out, ceil(h / stride), ceil(w / stride)]`, the extra
    channels split evenly before and after the input's.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class Sum(nn.Module):
    """`a + b`, as a module so that hooks can capture a residual block's pre-activation."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus shortcut, then ReLU.

    `x: [b, c_in, h, w]` → `[b, c_out, h / stride, w / stride]`. `shortcut` `"A"` pads with
    zeros, `"B"` projects with a 1×1 conv and BN; either only where the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = relu()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = (
                PadShortcut(in_channels, out_channels, stride=stride) if shortcut == "A" else nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)))
        self.add = Sum()
        self.relu2 = relu()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.add(out, self.shortcut(x)))


class ResNet(nn.Module):
    """Stem conv3×3 → BN → ReLU, stages of `BasicBlock`s, global average pooling, linear.

    Input `x: [batch, channels, height, width]`, output `[batch, num_classes]`. Stage k
    (`layer{k}`) has `widths[k-1]` channels and halves the map in its first block (k > 1).
    Probes: `stem_relu`, each block's `relu2` (pre-activation: its `add`), the logits `fc`.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, name: str,
                 blocks: tuple[int, ...], widths: tuple[int, ...], shortcut: str) -> None:
        super().__init__()
        in_channels, _, _ = image_shape(name, input_shape)
        self.stem_conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.stem_relu = relu()
        channels = widths[0]
        for k, (n_blocks, width) in enumerate(zip(blocks, widths), start=1):
            stage = [BasicBlock(channels, width, stride=1 if k == 1 else 2, shortcut=shortcut)]
            stage += [BasicBlock(width, width, stride=1, shortcut=shortcut) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{k}", nn.Sequential(*stage))
            channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        self.num_stages = len(blocks)
        block_outputs = [f"layer{k}.{i}" for k, n in enumerate(blocks, start=1) for i in range(n)]
        preactivations = {"stem_relu": "stem_bn", **{f"{b}.relu2": f"{b}.add" for b in block_outputs}}
        annotate(self, probe_layers=(*preactivations, "fc"), output_layer="fc", preactivation_layers=preactivations)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_relu(self.stem_bn(self.stem_conv(x)))
        for k in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{k}")(x)
        return self.fc(self.flatten(self.avgpool(x)))


def _check_shortcut(name: str, shortcut: str) -> str:
    if shortcut not in ("A", "B"):
        raise ValueError(f"{name} option 'shortcut' must be one of ['A', 'B']; got {shortcut!r}")
    return shortcut


def _cifar_resnet(depth: int, input_shape: tuple[int, ...], num_classes: int, shortcut: str) -> nn.Module:
    name = f"resnet{depth}"
    n = (depth - 2) // 6  # 6n + 2 layers: three stages of n two-conv blocks, stem, classifier
    return ResNet(input_shape, num_classes, name=name, blocks=(n, n, n), widths=(16, 32, 64),
                  shortcut=_check_shortcut(name, shortcut))


def resnet20(input_shape: tuple[int, ...], num_classes: int, *, shortcut: str = "A") -> nn.Module:
    """ResNet-20: 3 stages × 3 blocks, 16/32/64 channels; option-A shortcuts by default (0.27 M)."""
    return _cifar_resnet(20, input_shape, num_classes, shortcut)


def resnet32(input_shape: tuple[int, ...], num_classes: int, *, shortcut: str = "A") -> nn.Module:
    """ResNet-32: 3 stages × 5 blocks, 16/32/64 channels; option-A shortcuts by default (0.46 M)."""
    return _cifar_resnet(32, input_shape, num_classes, shortcut)


def resnet56(input_shape: tuple[int, ...], num_classes: int, *, shortcut: str = "A") -> nn.Module:
    """ResNet-56: 3 stages × 9 blocks, 16/32/64 channels; option-A shortcuts by default (0.85 M)."""
    return _cifar_resnet(56, input_shape, num_classes, shortcut)


def resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """CIFAR ResNet-18: 3×3 stem, no max-pool, 4 stages × 2 blocks of 64/128/256/512, option-B shortcuts."""
    return ResNet(input_shape, num_classes, name="resnet18", blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512),
                  shortcut="B")

