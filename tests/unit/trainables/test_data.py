"""Datasets: offline loaders, the real torchvision loaders on tiny files, probe sets, epoch batches."""

from __future__ import annotations

import hashlib
import pickle
import random
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from trainables.data import DATASETS, Splits, dataset_options, epoch_batches, load_dataset, probe_set
from trainables.data import offline

# ---------------------------------------------------------------- offline datasets


def test_digits_fixed_stratified_split() -> None:
    splits = load_dataset("digits")
    assert splits.info.input_shape == (1, 8, 8) and splits.info.num_classes == 10 and not splits.info.augment
    assert splits.x_train.shape == (1437, 1, 8, 8) and splits.x_test.shape == (360, 1, 8, 8)
    per_class = torch.bincount(splits.y_test, minlength=10)
    assert per_class.min() >= 35 and per_class.max() <= 37  # stratified: about 20% of each class
    assert abs(splits.x_train.mean().item()) < 1e-5 and abs(splits.x_train.std().item() - 1) < 1e-5


def test_digits_split_ignores_global_rngs() -> None:
    first = load_dataset("digits")
    torch.manual_seed(123)
    np.random.seed(123)
    again = offline._digits.__wrapped__()  # bypass the cache: a fresh computation
    torch.testing.assert_close(first.y_train, again.y_train)
    torch.testing.assert_close(first.x_test, again.x_test)


def test_mnist1d_generated_locally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    np.random.seed(7)
    random.seed(7)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(7)
    random.seed(7)
    splits = offline._mnist1d.__wrapped__(500, 0.8, 42, False)
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)  # global RNGs untouched
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory
    assert splits.x_train.shape == (400, 1, 40) and splits.x_test.shape == (100, 1, 40)
    assert splits.info.input_shape == (1, 40) and set(splits.y_train.tolist()) == set(range(10))
    again = load_dataset("mnist1d", options={"num_samples": 500})
    torch.testing.assert_close(splits.x_train, again.x_train)
    other = load_dataset("mnist1d", options={"num_samples": 500, "seed": 1})
    assert not torch.equal(other.x_train, splits.x_train)


@pytest.mark.parametrize(("option", "value"), [("num_samples", 55), ("train_split", 1.0), ("seed", -1),
                                               ("shuffle_seq", "yes")])
def test_mnist1d_bad_option_values(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"mnist1d option '{option}'"):
        load_dataset("mnist1d", options={option: value})


def test_synthetic_shapes_and_determinism() -> None:
    options = {"n_train": 30, "n_test": 10, "input_shape": [2, 4, 4], "num_classes": 3, "seed": 5}
    splits = load_dataset("synthetic", options=options)
    assert splits.x_train.shape == (30, 2, 4, 4) and splits.x_test.shape == (10, 2, 4, 4)
    assert splits.info.input_shape == (2, 4, 4) and splits.info.num_classes == 3
    assert torch.bincount(splits.y_train).tolist() == [10, 10, 10]
    again = offline._synthetic.__wrapped__(30, 10, (2, 4, 4), 3, 1.0, 5)
    torch.testing.assert_close(splits.x_train, again.x_train)
    torch.testing.assert_close(splits.y_test, again.y_test)
    other = load_dataset("synthetic", options={**options, "seed": 6})
    assert not torch.equal(other.x_train, splits.x_train)


@pytest.mark.parametrize(("option", "value"), [("n_train", 0), ("input_shape", [0]), ("num_classes", 1),
                                               ("noise", -1.0), ("seed", 1.5)])
def test_synthetic_bad_option_values(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"synthetic option '{option}'"):
        load_dataset("synthetic", options={option: value})


def test_unknown_dataset_and_option() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'; expected one of \[.*'cifar10'"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match=r"unknown option 'n' for dataset 'synthetic'; expected one of \["):
        load_dataset("synthetic", options={"n": 3})
    with pytest.raises(ValueError, match=r"unknown option 'seed' for dataset 'digits'; it takes no options"):
        load_dataset("digits", options={"seed": 3})
    assert dataset_options("mnist1d")["num_samples"] == 5000
    with pytest.raises(TypeError):
        DATASETS["mine"] = offline.digits  # type: ignore[index]


# ---------------------------------------------------------------- torchvision datasets on tiny files


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format: magic (uint8 type, ndim), big-endian dims, then the bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _images(n: int, channels: int) -> np.ndarray:
    """`[n, channels, 32, 32]` uint8 images, constant per (image, channel): 10·(channel + 1) + image."""
    values = 10 * (np.arange(channels)[None, :] + 1) + np.arange(n)[:, None]
    return np.broadcast_to(values[:, :, None, None], (n, channels, 32, 32)).astype(np.uint8)


def _check_pixels(x: torch.Tensor, name: str, n: int, channels: int) -> None:
    mean, std = (torch.tensor(s).view(1, -1) for s in _stats(name))
    raw = torch.as_tensor(_images(n, channels)[:, :, 0, 0], dtype=torch.float32)
    torch.testing.assert_close(x[:, :, 5, 7], (raw / 255 - mean) / std)


def _stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from trainables.data.vision import _SOURCES

    return _SOURCES[name].mean, _SOURCES[name].std


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_layout(tmp_path: Path, name: str, folder: str) -> None:
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 6), ("t10k", 4)):
        images = np.zeros((n, 28, 28), np.uint8) + np.arange(1, n + 1, dtype=np.uint8)[:, None, None]
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10)
    splits = load_dataset(name, data_root=tmp_path)
    assert splits.x_train.shape == (6, 1, 28, 28) and splits.x_test.shape == (4, 1, 28, 28)
    assert splits.y_test.tolist() == [0, 1, 2, 3] and splits.info.input_shape == (1, 28, 28)
    (mean,), (std,) = _stats(name)
    torch.testing.assert_close(splits.x_train[:, 0, 3, 3], (torch.arange(1.0, 7.0) / 255 - mean) / std)


def _write_cifar(root: Path, monkeypatch: pytest.MonkeyPatch, cls: type, folder: str, train: list[str],
                 test: str, meta: str, label_key: str, meta_key: str) -> None:
    """A CIFAR pickle layout with two images per file; the class's md5 lists set to these files."""
    base = root / folder
    base.mkdir()
    for name in [*train, test]:
        entry = {"data": _images(2, 3).reshape(2, 3072), label_key: [1, 0]}
        (base / name).write_bytes(pickle.dumps(entry))
    (base / meta).write_bytes(pickle.dumps({meta_key: [f"class{i}" for i in range(10)]}))
    monkeypatch.setattr(cls, "train_list", [[name, _md5(base / name)] for name in train])
    monkeypatch.setattr(cls, "test_list", [[test, _md5(base / test)]])
    monkeypatch.setattr(cls, "meta", {"filename": meta, "key": meta_key, "md5": _md5(base / meta)})


def test_cifar10_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    _write_cifar(tmp_path, monkeypatch, torchvision.datasets.CIFAR10, "cifar-10-batches-py", batches,
                 "test_batch", "batches.meta", "labels", "label_names")
    splits = load_dataset("cifar10", data_root=tmp_path)
    assert splits.x_train.shape == (10, 3, 32, 32) and splits.x_test.shape == (2, 3, 32, 32)
    assert splits.info.augment and splits.info.num_classes == 10 and splits.y_test.tolist() == [1, 0]
    _check_pixels(splits.x_test, "cifar10", 2, 3)


def test_cifar100_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_cifar(tmp_path, monkeypatch, torchvision.datasets.CIFAR100, "cifar-100-python", ["train"], "test",
                 "meta", "fine_labels", "fine_label_names")
    splits = load_dataset("cifar100", data_root=tmp_path)
    assert splits.x_train.shape == (2, 3, 32, 32) and splits.info.num_classes == 100
    _check_pixels(splits.x_train, "cifar100", 2, 3)


def test_svhn_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    split_list = {}
    for split, n in (("train", 3), ("test", 2)):
        path = tmp_path / f"{split}_32x32.mat"
        # SVHN stores X as [h, w, c, n] and labels 1..10, where 10 means the digit 0
        scipy_io.savemat(path, {"X": _images(n, 3).transpose(2, 3, 1, 0), "y": np.array([[10], [1], [2]][:n])})
        split_list[split] = ["unused-url", path.name, _md5(path)]
    monkeypatch.setattr(torchvision.datasets.SVHN, "split_list", split_list)
    splits = load_dataset("svhn", data_root=tmp_path)
    assert splits.x_train.shape == (3, 3, 32, 32) and splits.y_train.tolist() == [0, 1, 2]
    _check_pixels(splits.x_train, "svhn", 3, 3)


@pytest.mark.parametrize(("name", "where"), [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"),
                                             ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                             ("svhn", "32x32.mat")])
def test_missing_files_say_where_and_how(tmp_path: Path, name: str, where: str) -> None:
    pattern = rf"{name}.*{re.escape(str(tmp_path))}.*{re.escape(where)}.*download=true"
    with pytest.raises(FileNotFoundError, match=pattern) as info:
        load_dataset(name, data_root=tmp_path)
    assert info.value.__cause__ is None and "download: true" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # download=False never creates anything


def test_torchvision_datasets_need_data_root() -> None:
    with pytest.raises(ValueError, match=r"dataset 'cifar10' needs data_root.*got None"):
        load_dataset("cifar10")


# ---------------------------------------------------------------- probe set


def _toy_splits(n_train: int = 20, n_test: int = 10) -> Splits:
    return load_dataset("synthetic", options={"n_train": n_train, "n_test": n_test, "input_shape": [3, 4, 4]})


def test_probe_set_all_examples_in_fixed_order() -> None:
    splits = _toy_splits()
    for size in (None, 30, 1000):
        x, y = probe_set(splits, size=size, seed=0)
        torch.testing.assert_close(x, torch.cat([splits.x_train, splits.x_test]))
        torch.testing.assert_close(y, torch.cat([splits.y_train, splits.y_test]))


def test_probe_set_seeded_subset_of_the_union() -> None:
    splits = _toy_splits()
    x, y = probe_set(splits, size=12, seed=4)
    x2, y2 = probe_set(splits, size=12, seed=4)
    x3, _ = probe_set(splits, size=12, seed=5)
    assert x.shape == (12, 3, 4, 4) and y.shape == (12,)
    torch.testing.assert_close(x, x2)
    torch.testing.assert_close(y, y2)
    assert not torch.equal(x, x3)
    union = torch.cat([splits.x_train, splits.x_test]).flatten(1)
    rows = [int(torch.nonzero((union == row).all(1))[0]) for row in x.flatten(1)]
    assert rows == sorted(set(rows))  # distinct examples, in train-then-test order
    assert any(r >= 20 for r in rows) and any(r < 20 for r in rows)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_probe_set_bad_size(size: object) -> None:
    with pytest.raises(ValueError, match="probe size"):
        probe_set(_toy_splits(), size=size, seed=0)  # type: ignore[arg-type]


# ---------------------------------------------------------------- epoch batches


def _marked_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is a random pattern on positive values plus 100·i, so that it can be identified by its values."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 2, 6, 6, generator=g) + 1 + 100 * torch.arange(n).view(n, 1, 1, 1)
    return x, torch.arange(n)


@pytest.mark.parametrize("augment", [False, True])
def test_epoch_batches_deterministic_and_exhaustive(augment: bool) -> None:
    x, y = _marked_images(23)
    first = list(epoch_batches(x, y, batch_size=5, epoch_seed=9, augment=augment))
    again = list(epoch_batches(x, y, batch_size=5, epoch_seed=9, augment=augment))
    other = list(epoch_batches(x, y, batch_size=5, epoch_seed=10, augment=augment))
    assert [len(b) for b, _ in first] == [5, 5, 5, 5, 3]
    for (xa, ya), (xb, yb) in zip(first, again):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    seen = torch.cat([yb for _, yb in first])
    assert sorted(seen.tolist()) == list(range(23))
    assert not torch.equal(seen, torch.cat([yb for _, yb in other]))
    assert [len(b) for b, _ in epoch_batches(x, y, batch_size=5, epoch_seed=9, augment=augment,
                                             drop_last=True)] == [5, 5, 5, 5]


@pytest.mark.parametrize("channels_last", [False, True])
def test_epoch_batches_gather_keeps_values_and_layout(channels_last: bool) -> None:
    # Unaugmented batches are gathered with index_select where the data is contiguous; channels_last
    # data (conv models) must stay channels_last, and either way a batch is the permuted rows.
    x = torch.randn(30, 3, 6, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.arange(30)
    for xb, yb in epoch_batches(x, y, batch_size=7, epoch_seed=4, augment=False):
        assert torch.equal(xb, x[yb])
        assert xb.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_augmentation_is_a_flip_and_shift_of_the_same_image() -> None:
    x, y = _marked_images(40)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    changed = flipped = 0
    for xb, yb in epoch_batches(x, y, batch_size=16, epoch_seed=1, augment=True):
        assert xb.shape[1:] == x.shape[1:]
        for image, label in zip(xb, yb):
            nonzero = image[image != 0]
            # labels travel with their images: the marker 100·label survives every crop
            assert ((nonzero - 1) // 100 == label).all()
            candidates = [(f, dy, dx) for f in (False, True) for dy in range(9) for dx in range(9)
                          if torch.equal(image, (padded[label].flip(-1) if f else padded[label])[:, dy:dy + 6,
                                                                                               dx:dx + 6])]
            assert candidates, "augmented image is not a flipped/shifted copy of its source"
            changed += not torch.equal(image, x[label])
            flipped += all(f for f, _, _ in candidates)
    assert changed > 20 and 5 < flipped < 35


def test_epoch_batches_bad_arguments() -> None:
    x, y = _marked_images(4)
    with pytest.raises(ValueError, match="batch_size"):
        epoch_batches(x, y, batch_size=0, epoch_seed=0, augment=False)
    with pytest.raises(ValueError, match=r"augment=True needs images \[n, c, h, w\]"):
        epoch_batches(x.flatten(1), y, batch_size=2, epoch_seed=0, augment=True)
    with pytest.raises(ValueError, match="shapes"):
        epoch_batches(x, y[:3], batch_size=2, epoch_seed=0, augment=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_epoch_batches_stay_on_the_device() -> None:
    x, y = (t.cuda() for t in _marked_images(50))
    batches = list(epoch_batches(x, y, batch_size=16, epoch_seed=3, augment=True))
    again = list(epoch_batches(x, y, batch_size=16, epoch_seed=3, augment=True))
    assert all(xb.is_cuda and yb.is_cuda for xb, yb in batches)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert sorted(torch.cat([yb for _, yb in batches]).tolist()) == list(range(50))
