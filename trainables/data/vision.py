"""The torchvision image datasets, read whole from `data_root` into normalised tensors.

The real torchvision classes find, check (CIFAR and SVHN: md5) and optionally download the
files; we then take their raw `uint8` arrays in bulk rather than going through PIL per example.
Not cached: the files can appear or change between calls (a first `download: true`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainables.data.splits import DatasetInfo, Splits


@dataclass(frozen=True)
class _Source:
    """Where torchvision keeps one dataset under `data_root`, and how to read it."""

    open: Callable[[str, bool, bool], Any]  # (root, train, download) -> torchvision dataset
    location: str  # relative to data_root, for the not-found message
    num_classes: int
    channels_last: bool  # CIFAR stores [n, h, w, c]; MNIST [n, h, w]; SVHN [n, c, h, w]
    mean: tuple[float, ...]  # standard per-channel statistics of the training images, in [0, 1] units
    std: tuple[float, ...]
    augment: bool


def _torchvision(cls_name: str) -> Callable[[str, bool, bool], Any]:
    def open_split(root: str, train: bool, download: bool) -> Any:
        from torchvision import datasets

        cls = getattr(datasets, cls_name)
        if cls_name == "SVHN":
            return cls(root, split="train" if train else "test", download=download)
        return cls(root, train=train, download=download)

    return open_split


_SOURCES: dict[str, _Source] = {
    "mnist": _Source(_torchvision("MNIST"), "MNIST/raw", 10, False, (0.1307,), (0.3081,), False),
    "fashion_mnist": _Source(_torchvision("FashionMNIST"), "FashionMNIST/raw", 10, False,
                             (0.2860,), (0.3530,), False),
    "cifar10": _Source(_torchvision("CIFAR10"), "cifar-10-batches-py", 10, True,
                       (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True),
    "cifar100": _Source(_torchvision("CIFAR100"), "cifar-100-python", 100, True,
                        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
    "svhn": _Source(_torchvision("SVHN"), "{train,test}_32x32.mat", 10, False,
                    (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), True),
}


def mnist(data_root: str | os.PathLike | None = None, download: bool = False) -> Splits:
    """MNIST 60,000/10,000 as `[n, 1, 28, 28]`, from `<data_root>/MNIST/raw`."""
    return _load("mnist", data_root, download)


def fashion_mnist(data_root: str | os.PathLike | None = None, download: bool = False) -> Splits:
    """Fashion-MNIST 60,000/10,000 as `[n, 1, 28, 28]`, from `<data_root>/FashionMNIST/raw`."""
    return _load("fashion_mnist", data_root, download)


def cifar10(data_root: str | os.PathLike | None = None, download: bool = False) -> Splits:
    """CIFAR-10 50,000/10,000 as `[n, 3, 32, 32]`, from `<data_root>/cifar-10-batches-py`."""
    return _load("cifar10", data_root, download)


def cifar100(data_root: str | os.PathLike | None = None, download: bool = False) -> Splits:
    """CIFAR-100 (fine labels) 50,000/10,000 as `[n, 3, 32, 32]`, from `<data_root>/cifar-100-python`."""
    return _load("cifar100", data_root, download)


def svhn(data_root: str | os.PathLike | None = None, download: bool = False) -> Splits:
    """SVHN train/test (73,257/26,032; no 'extra') as `[n, 3, 32, 32]`, from `<data_root>/*_32x32.mat`.

    Labels 0..9 (torchvision maps the files' 10 to 0).
    """
    return _load("svhn", data_root, download)


def _load(name: str, data_root: str | os.PathLike | None, download: bool) -> Splits:
    source = _SOURCES[name]
    if data_root is None:
        raise ValueError(f"dataset {name!r} needs data_root, the folder that holds (or will hold) "
                         f"{source.location}; got None")
    if not isinstance(download, bool):
        raise ValueError(f"download must be true or false; got {download!r}")
    root = os.fspath(data_root)
    try:
        train, test = source.open(root, True, download), source.open(root, False, download)
    except RuntimeError as err:
        if download:
            raise
        where = os.path.join(root, source.location)
        raise FileNotFoundError(
            f"dataset {name!r} is missing or corrupted: expected {where}; download it once with "
            f"`download: true` in the sweep file or `--set download=true` on the command line "
            f"(torchvision said: {err})"
        ) from None
    x_train, y_train = _tensors(train, source)
    x_test, y_test = _tensors(test, source)
    info = DatasetInfo(name=name, input_shape=tuple(x_train.shape[1:]), num_classes=source.num_classes,
                       augment=source.augment)
    return Splits(info, x_train, y_train, x_test, y_test)


def _tensors(dataset: Any, source: _Source) -> tuple[torch.Tensor, torch.Tensor]:
    """`x: [n, c, h, w]` float32 normalised, `y: [n]` int64, from a torchvision dataset's raw arrays."""
    x = torch.as_tensor(np.asarray(dataset.data))
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif source.channels_last:
        x = x.permute(0, 3, 1, 2)
    mean = torch.tensor(source.mean).view(-1, 1, 1)
    std = torch.tensor(source.std).view(-1, 1, 1)
    # One contiguous float copy, then in place: CIFAR's training images are 600 MB as float32.
    x = x.to(torch.float32, memory_format=torch.contiguous_format)
    x.div_(255.0).sub_(mean).div_(std)
    labels = dataset.targets if hasattr(dataset, "targets") else dataset.labels
    return x, torch.as_tensor(np.asarray(labels), dtype=torch.int64)
