"""Model registry: name → builder, and `build_model` that validates name, shape and options.

Every built model carries `probe_layers` (paths whose outputs the analysis captures: each
block's output after its ReLU, then the logits), `output_layer` (the classifier, excluded
from pruning on request) and `preactivation_layers` (probe → module whose output is its
pre-activation).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from trainables.models.conv import conv2, conv4, conv6
from trainables.models.fcn import fcn
from trainables.models.lenet import lenet5, lenet_300_100
from trainables.models.resnet import resnet18, resnet20, resnet32, resnet56
from trainables.models.vgg import vgg11, vgg16, vgg19, vgg_svhn

__all__ = ["MODELS", "build_model", "model_options"]

MODELS: Mapping[str, Callable[..., nn.Module]] = MappingProxyType({
    "lenet_300_100": lenet_300_100,
    "lenet5": lenet5,
    "conv2": conv2,
    "conv4": conv4,
    "conv6": conv6,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "vgg_svhn": vgg_svhn,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet18": resnet18,
    "fcn": fcn,
})


def build_model(name: str, *, input_shape: tuple[int, ...], num_classes: int,
                options: Mapping[str, Any] | None = None) -> nn.Module:
    """Build model `name` for inputs `[batch, *input_shape]` and `num_classes` logits.

    Parameters are initialised by PyTorch's defaults from the global RNG, which the caller
    seeds. Raises `ValueError` for an unknown name, option, or a bad shape.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    builder = MODELS[name]
    options = dict(options or {})
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        expected = f"expected one of {sorted(valid)}" if valid else "it takes no options"
        raise ValueError(f"unknown option {unknown[0]!r} for model {name!r}; {expected}")
    return builder(_check_shape(input_shape), _check_classes(num_classes), **options)


def model_options(name: str) -> dict[str, Any]:
    """The options model `name` accepts, with their defaults (keyword-only builder arguments)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    parameters = inspect.signature(MODELS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    ok = (isinstance(input_shape, (tuple, list)) and 1 <= len(input_shape) <= 3
          and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape))
    if not ok:
        raise ValueError(
            f"input_shape must be 1 to 3 positive integers, e.g. (1, 28, 28) or (40,); got {input_shape!r}"
        )
    return tuple(input_shape)


def _check_classes(num_classes: int) -> int:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
    return num_classes
