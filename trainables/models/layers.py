"""Shape arithmetic and probe bookkeeping shared by the model builders."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn


def image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return `(channels, height, width)` for a convolutional model, or explain why not.

    Convolutional models here are 2-D; a 1-D signal such as mnist1d `(1, 40)` is refused
    rather than silently reshaped, because any reshape would invent a spatial structure.
    """
    if len(input_shape) != 3:
        raise ValueError(
            f"model {model!r} needs image input_shape (channels, height, width); got "
            f"{tuple(input_shape)}; use 'lenet_300_100' or 'fcn' for flat or 1-D inputs"
        )
    channels, height, width = input_shape
    return channels, height, width


def conv_size(size: int, *, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a convolution or pooling window (PyTorch's floor rule)."""
    return (size + 2 * padding - kernel) // stride + 1


def flat_features(input_shape: tuple[int, ...]) -> int:
    """Number of features after `nn.Flatten()` of one example of `input_shape`."""
    n = 1
    for d in input_shape:
        n *= d
    return n


def dense_block(name: str, *, in_features: int, out_features: int, batchnorm: bool) -> list[tuple[str, nn.Module]]:
    """`name` Linear [→ `name_bn` BatchNorm1d] → `name_relu` ReLU.

    The bias is dropped when BatchNorm follows: BN's shift makes it redundant, and a
    redundant parameter would only blur the sparsity figures.
    """
    layers: list[tuple[str, nn.Module]] = [(name, nn.Linear(in_features, out_features, bias=not batchnorm))]
    if batchnorm:
        layers.append((f"{name}_bn", nn.BatchNorm1d(out_features)))
    layers.append((f"{name}_relu", relu()))
    return layers


def conv_block(name: str, *, in_channels: int, out_channels: int, batchnorm: bool) -> list[tuple[str, nn.Module]]:
    """`name` 3×3 same-padding Conv2d [→ `name_bn` BatchNorm2d] → `name_relu` ReLU."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not batchnorm)
    layers: list[tuple[str, nn.Module]] = [(name, conv)]
    if batchnorm:
        layers.append((f"{name}_bn", nn.BatchNorm2d(out_channels)))
    layers.append((f"{name}_relu", relu()))
    return layers


def relu() -> nn.ReLU:
    """A ReLU module that keeps its input intact.

    Never in-place: a forward hook on the preceding Conv/Linear/BN captures the
    pre-activation tensor itself, which an in-place ReLU would overwrite afterwards.
    """
    return nn.ReLU(inplace=False)


def probed_sequential(layers: Sequence[tuple[str, nn.Module]]) -> nn.Sequential:
    """An `nn.Sequential` of named layers whose probes are derived from its structure.

    Every `nn.ReLU` is a probe point with the module just before it as pre-activation;
    the last layer is the classifier (`output_layer`) and the last probe (the logits).
    """
    model = nn.Sequential(OrderedDict(layers))
    names = [name for name, _ in layers]
    preactivations = {
        name: names[i - 1] for i, (name, module) in enumerate(layers) if isinstance(module, nn.ReLU)
    }
    annotate(model, probe_layers=(*preactivations, names[-1]), output_layer=names[-1],
             preactivation_layers=preactivations)
    return model


def annotate(model: nn.Module, *, probe_layers: Sequence[str], output_layer: str,
             preactivation_layers: dict[str, str]) -> None:
    """Attach `probe_layers`, `output_layer` and `preactivation_layers` to `model`.

    Checks every path against `named_modules()` so that a renamed layer fails at
    construction, not hours later in the analysis.
    """
    paths = {path for path, _ in model.named_modules()}
    named = [*probe_layers, output_layer, *preactivation_layers, *preactivation_layers.values()]
    missing = sorted({p for p in named if p not in paths})
    if missing:
        raise ValueError(f"probe paths {missing} are not modules of {type(model).__name__}")
    model.probe_layers = tuple(probe_layers)
    model.output_layer = output_layer
    model.preactivation_layers = dict(preactivation_layers)


def conv_stack(model: str, cfg: Sequence[int | str], *, input_shape: tuple[int, ...],
               batchnorm: bool) -> tuple[list[tuple[str, nn.Module]], int, int, int]:
    """Layers for a VGG-style `cfg` (channel counts, `"M"` for 2×2 max-pooling).

    Returns the named layers (`conv{i}` blocks, `pool{j}`) and the output
    `(channels, height, width)`. A pool that would shrink a map below 1×1 is left out, so
    that small inputs (8×8 digits) still fit deep stacks; 32×32 inputs keep every pool.
    """
    channels, height, width = image_shape(model, input_shape)
    layers: list[tuple[str, nn.Module]] = []
    n_conv = n_pool = 0
    for item in cfg:
        if item == "M":
            if min(height, width) >= 2:
                n_pool += 1
                layers.append((f"pool{n_pool}", nn.MaxPool2d(2)))
                height, width = height // 2, width // 2
        else:
            n_conv += 1
            layers += conv_block(f"conv{n_conv}", in_channels=channels, out_channels=int(item), batchnorm=batchnorm)
            channels = int(item)
    return layers, channels, height, width
