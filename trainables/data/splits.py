"""What a loaded dataset is: its description and its train/test tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset.

    `input_shape` excludes the batch dimension; `augment` says whether training uses
    random crop (zero padding 4) and horizontal flip, as for CIFAR/SVHN-like images.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    augment: bool


@dataclass(frozen=True)
class Splits:
    """Standard train/test split of one dataset, fully in memory.

    `x_*: [n, *info.input_shape]` float32, normalised; `y_*: [n]` int64 in
    `[0, info.num_classes)`. Treat the tensors as read-only: loaders may cache and share
    them within a process.
    """

    info: DatasetInfo
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if x.dtype != torch.float32 or y.dtype != torch.int64:
                raise ValueError(f"{part} split must be float32 inputs and int64 labels; got {x.dtype}, {y.dtype}")
            if tuple(x.shape[1:]) != self.info.input_shape or x.shape[0] != y.shape[0] or y.ndim != 1:
                raise ValueError(
                    f"{part} split of {self.info.name!r} has inputs {tuple(x.shape)} and labels {tuple(y.shape)}; "
                    f"expected [n, *{self.info.input_shape}] and [n]"
                )
