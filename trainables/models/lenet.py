"""LeNet-300-100 (fully connected) and LeNet-5 (convolutional), LeCun et al. 1998."""

from __future__ import annotations

from torch import nn

from trainables.models.layers import conv_size, dense_block, flat_features, image_shape, probed_sequential, relu


def lenet_300_100(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Linear in→300→100→`num_classes` with ReLUs; flattens any input shape.

    Input `x: [batch, *input_shape]`, output logits `[batch, num_classes]`.
    Probes: `fc1_relu`, `fc2_relu`, `fc3` (logits).
    """
    return probed_sequential([
        ("flatten", nn.Flatten()),
        *dense_block("fc1", in_features=flat_features(input_shape), out_features=300, batchnorm=False),
        *dense_block("fc2", in_features=300, out_features=100, batchnorm=False),
        ("fc3", nn.Linear(100, num_classes)),
    ])


def lenet5(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Conv 6@5×5 → pool → conv 16@5×5 → pool → FC 120 → 84 → `num_classes`.

    Input `x: [batch, channels, height, width]`, output `[batch, num_classes]`.
    Adapted to the input size: `conv1` pads by 2 (the usual 28×28 MNIST adaptation of
    the 32×32 original), `conv2` is unpadded as in the original unless the map is then
    smaller than 5×5 (e.g. 8×8 digits), where it pads by 2 too. The width of `fc1`
    follows from the resulting map. ReLU and max-pooling replace the original's
    sigmoid and sub-sampling, as in current practice.
    """
    channels, height, width = image_shape("lenet5", input_shape)
    h1, w1 = height // 2, width // 2  # conv1 keeps the size, pool1 halves it
    if min(h1, w1) < 1:
        raise ValueError(f"model 'lenet5' needs height and width >= 2; got input_shape {tuple(input_shape)}")
    pad2 = 0 if min(h1, w1) >= 5 else 2
    h2 = conv_size(h1, kernel=5, padding=pad2) // 2
    w2 = conv_size(w1, kernel=5, padding=pad2) // 2
    if min(h2, w2) < 1:
        raise ValueError(f"model 'lenet5' needs height and width >= 4; got input_shape {tuple(input_shape)}")
    return probed_sequential([
        ("conv1", nn.Conv2d(channels, 6, kernel_size=5, padding=2)),
        ("conv1_relu", relu()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(6, 16, kernel_size=5, padding=pad2)),
        ("conv2_relu", relu()),
        ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        *dense_block("fc1", in_features=16 * h2 * w2, out_features=120, batchnorm=False),
        *dense_block("fc2", in_features=120, out_features=84, batchnorm=False),
        ("fc3", nn.Linear(84, num_classes)),
    ])
