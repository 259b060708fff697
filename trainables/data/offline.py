"""Datasets made on the spot, without files or network: digits, mnist1d, synthetic.

Each loader is a pure function of its options, so its result is cached per process
(`functools.lru_cache`): Ray workers that train several levels of the same lineage load the
data once. The cached tensors are shared, which is safe only because nobody writes to them.
"""

from __future__ import annotations

import functools
import os
import random

import numpy as np
import torch

from trainables.data.splits import DatasetInfo, Splits

_DIGITS_TEST_SIZE = 360  # 1437/360 split, stratified, fixed: independent of any lineage seed
_DIGITS_SPLIT_SEED = 0


def digits(data_root: str | os.PathLike | None = None, download: bool = False) -> Splits:
    """scikit-learn's 1797 8×8 digits as `[n, 1, 8, 8]` images, scaled to [0, 1] then normalised.

    Fixed stratified split: 1437 train, 360 test. `data_root` and `download` are ignored.
    """
    return _digits()


@functools.lru_cache(maxsize=1)
def _digits() -> Splits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0  # pixels are 0..16
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=_DIGITS_TEST_SIZE, stratify=bunch.target, random_state=_DIGITS_SPLIT_SEED
    )
    train_idx, test_idx = torch.as_tensor(np.sort(train_idx)), torch.as_tensor(np.sort(test_idx))
    x_train, x_test = x[train_idx], x[test_idx]
    mean, std = x_train.mean(), x_train.std()  # one channel: statistics of the training pixels
    info = DatasetInfo(name="digits", input_shape=(1, 8, 8), num_classes=10, augment=False)
    return Splits(info, (x_train - mean) / std, y[train_idx], (x_test - mean) / std, y[test_idx])


def mnist1d(data_root: str | os.PathLike | None = None, download: bool = False, *,
            num_samples: int = 5000, train_split: float = 0.8, seed: int = 42,
            shuffle_seq: bool = False) -> Splits:
    """MNIST-1D (Greydanus 2020) generated locally: `[n, 1, 40]` signals, 10 classes.

    Options are those of `mnist1d.data.get_dataset_args`: `num_samples` (a multiple of 10,
    split `train_split` : 1 − `train_split`), the generator `seed` (42 reproduces the
    published set) and `shuffle_seq` (permute the 40 positions, the same way for every
    example). The package already standardises the signals. Never downloads, never writes.
    """
    if not (isinstance(num_samples, int) and num_samples >= 20 and num_samples % 10 == 0):
        raise ValueError(f"mnist1d option 'num_samples' must be a multiple of 10, at least 20; got {num_samples!r}")
    if not (isinstance(train_split, float) and 0.0 < train_split < 1.0
            and 0 < int(num_samples * train_split) < num_samples):
        raise ValueError(f"mnist1d option 'train_split' must be a float in (0, 1) leaving both splits non-empty; "
                         f"got {train_split!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"mnist1d option 'seed' must be a non-negative integer; got {seed!r}")
    if not isinstance(shuffle_seq, bool):
        raise ValueError(f"mnist1d option 'shuffle_seq' must be true or false; got {shuffle_seq!r}")
    return _mnist1d(num_samples, train_split, seed, shuffle_seq)


@functools.lru_cache(maxsize=4)
def _mnist1d(num_samples: int, train_split: float, seed: int, shuffle_seq: bool) -> Splits:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed, args.shuffle_seq = num_samples, train_split, seed, shuffle_seq
    # make_dataset seeds and draws from the global `random` and numpy RNGs; restore them so
    # that loading data never shifts anyone else's random stream.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    def inputs(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32).unsqueeze(1)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.int64)

    info = DatasetInfo(name="mnist1d", input_shape=(1, 40), num_classes=10, augment=False)
    return Splits(info, inputs(data["x"]), labels(data["y"]), inputs(data["x_test"]), labels(data["y_test"]))


def synthetic(data_root: str | os.PathLike | None = None, download: bool = False, *,
              n_train: int = 512, n_test: int = 128, input_shape: tuple[int, ...] = (1, 8, 8),
              num_classes: int = 4, noise: float = 1.0, seed: int = 0) -> Splits:
    """Seeded Gaussian clusters: class means drawn from N(0, I), examples mean + `noise`·N(0, I).

    `x_*: [n, *input_shape]`, standardised with the training mean and std; labels are
    balanced within each split. A fast stand-in for real data in tests and smoke runs.
    """
    shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else input_shape
    checks = {
        "n_train": (n_train, _positive_int(n_train), "a positive integer"),
        "n_test": (n_test, _positive_int(n_test), "a positive integer"),
        "input_shape": (input_shape, isinstance(shape, tuple) and 1 <= len(shape) <= 3
                        and all(_positive_int(d) for d in shape), "1 to 3 positive integers"),
        "num_classes": (num_classes, _positive_int(num_classes) and num_classes >= 2, "an integer >= 2"),
        "noise": (noise, isinstance(noise, (int, float)) and not isinstance(noise, bool) and noise > 0,
                  "a positive number"),
        "seed": (seed, isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, "a non-negative integer"),
    }
    for name, (value, ok, expected) in checks.items():
        if not ok:
            raise ValueError(f"synthetic option {name!r} must be {expected}; got {value!r}")
    return _synthetic(n_train, n_test, shape, num_classes, float(noise), seed)


@functools.lru_cache(maxsize=4)
def _synthetic(n_train: int, n_test: int, input_shape: tuple[int, ...], num_classes: int,
               noise: float, seed: int) -> Splits:
    g = torch.Generator().manual_seed(seed)
    n_features = int(np.prod(input_shape))
    means = torch.randn(num_classes, n_features, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        x = means[y] + noise * torch.randn(n, n_features, generator=g)
        return x.reshape(n, *input_shape), y

    (x_train, y_train), (x_test, y_test) = draw(n_train), draw(n_test)
    mean = x_train.mean()
    std = x_train.std() if x_train.numel() > 1 else torch.tensor(1.0)
    info = DatasetInfo(name="synthetic", input_shape=input_shape, num_classes=num_classes, augment=False)
    return Splits(info, (x_train - mean) / std, y_train, (x_test - mean) / std, y_test)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
