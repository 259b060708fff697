"""Dataset registry: name → loader, and `load_dataset` that validates name and options.

A loader is called as `loader(data_root, download, **options) -> Splits`; its keyword-only
arguments are its options, which change the data and so belong to a lineage's identity.
`data_root` and `download` say only where the files are and may be fetched from.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from trainables.data import offline, vision
from trainables.data.splits import Splits

DATASETS: Mapping[str, Callable[..., Splits]] = MappingProxyType({
    "mnist": vision.mnist,
    "fashion_mnist": vision.fashion_mnist,
    "cifar10": vision.cifar10,
    "cifar100": vision.cifar100,
    "svhn": vision.svhn,
    "digits": offline.digits,
    "mnist1d": offline.mnist1d,
    "synthetic": offline.synthetic,
})


def load_dataset(name: str, *, options: Mapping[str, Any] | None = None,
                 data_root: str | os.PathLike | None = None, download: bool = False) -> Splits:
    """Load dataset `name` whole into CPU tensors (see `Splits` for shapes).

    torchvision datasets need `data_root`; `download=True` lets torchvision fetch missing
    files there. Offline datasets ignore both and are cached per process. Raises
    `ValueError` for an unknown name or option, `FileNotFoundError` for missing files.
    """
    valid = dataset_options(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(valid))
    if unknown:
        expected = f"expected one of {sorted(valid)}" if valid else "it takes no options"
        raise ValueError(f"unknown option {unknown[0]!r} for dataset {name!r}; {expected}")
    return DATASETS[name](data_root, download, **{k: _hashable(v) for k, v in options.items()})


def dataset_options(name: str) -> dict[str, Any]:
    """The options dataset `name` accepts, with their defaults."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    parameters = inspect.signature(DATASETS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _hashable(value: Any) -> Any:
    """Lists (as YAML and JSON deliver sequences) as tuples, so cached loaders can key on them."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value
