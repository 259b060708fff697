"""The one door to the workdir: locks, atomic writes and reads, committed folders, folder swaps.

Every writer here makes its output appear whole or not at all: a file is written to a hidden
temporary beside it (`.<name>.<random>.tmp`) and renamed into place; a folder is filled under
such a name and renamed. A process killed mid-write leaves only temporaries, which
`remove_temporaries` deletes under the owner's lock. Readers load tensors with
`weights_only=True`. Paths come from `trainables.layout`; this module decides how they are
written, never where.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

TEMPORARY_GLOB = ".*.tmp"  # what the writers here name their temporaries
_SWAPPED_ASIDE = ".old"  # suffix of an old folder `replace_dir` moved aside


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """An advisory lock on `path` held for the `with` block (released by the OS if the process
    dies); creates the lock file and its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_temporaries(root: str | os.PathLike) -> int:
    """Delete the hidden temporaries (files or folders) that writes killed mid-way left anywhere
    under `root`; returns how many. Call it only while no writer can be active there (under the
    folder's `exclusive_lock`)."""
    root = Path(root)
    removed = 0
    if not root.is_dir():
        return removed
    for path in sorted(root.rglob(TEMPORARY_GLOB), key=lambda p: len(p.parts)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
        else:
            continue  # inside a folder removed above
        removed += 1
    return removed


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Create or replace the file `path` with what `write(temporary_path)` writes: readers see
    the old file or the new one, never a part (the temporary is a hidden sibling, which
    pyarrow and polars skip too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """`data` as the file `path`, atomically and flushed to disk before the rename."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    write_atomically(path, write)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """`obj` as indented, sorted-key JSON, atomically (see `write_bytes`)."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


class DamagedFile(ValueError):
    """A file whose contents do not match the digest written with them."""


def save_torch(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """`torch.save(obj)` as the file `path`, atomically, with a digest of its contents under
    the key `DIGEST_KEY`, so that `load_torch` finds a damaged file instead of loading it (torch's
    format checks no sums: flipped bytes inside a tensor load as other values)."""
    payload = {**obj, DIGEST_KEY: content_digest(obj)}
    write_atomically(path, lambda tmp: torch.save(payload, tmp))


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """A torch file: tensors and plain containers only (`weights_only=True`). What `save_torch`
    wrote is checked against its digest (DamagedFile) and returned without it."""
    obj = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(obj, dict) and DIGEST_KEY in obj:
        obj = dict(obj)
        if obj.pop(DIGEST_KEY) != content_digest(obj):
            raise DamagedFile(f"{path}: its contents do not match the digest written with them")
    return obj


DIGEST_KEY = "content_sha256"


def content_digest(obj: Any) -> str:
    """sha256 of nested dicts, lists and tensors: keys, scalars, and each tensor's dtype, shape
    and values (in logical order, whatever its memory layout or device)."""
    digest = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
            t = value.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (Adam's step) included
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode())
                walk(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{len(value)}".encode())
            for item in value:
                walk(item)
        else:
            digest.update(f"S{value!r}".encode())

    walk(obj)
    return digest.hexdigest()


def remove(path: str | os.PathLike) -> None:
    """Delete a file (nothing if it is gone already)."""
    Path(path).unlink(missing_ok=True)


def set_aside(path: str | os.PathLike, *, suffix: str = ".corrupt") -> Path:
    """Rename a damaged file or folder to `<name><suffix>` (`<name><suffix>.<k>` if that exists),
    out of every reader's way but kept for inspection; returns the new path."""
    path = Path(path)
    aside, k = path.with_name(path.name + suffix), 1
    while aside.exists():
        aside, k = path.with_name(f"{path.name}{suffix}.{k}"), k + 1
    os.rename(path, aside)
    return aside


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def commit_dir(final: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """Create the folder `final` by filling a hidden sibling with `fill(folder)` and renaming it
    into place: a reader sees no folder or a complete one. A `final` that exists already (an
    identical group written by an earlier attempt) is kept, and this one dropped."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        fill(tmp)
        if final.exists():
            shutil.rmtree(tmp)
            return
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(final: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """Create or replace the folder `final` with what `fill(folder)` writes into a fresh one:
    a reader sees the old folder or the new one, never a mix. One replacement of `final` runs
    at a time (a lock beside it); leftovers of a replacement killed mid-way are removed first.
    The new folder is world-readable (a shared report), unlike a bare `mkdtemp`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(final.parent / f".{final.name}.lock"):
        # a killed replacement's build folder (`.tmp`) or the old folder it moved aside (`.tmp.old`)
        for stale in final.parent.glob(f".{final.name}.*.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        new = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
        try:
            new.chmod(0o755)
            fill(new)
            _swap(new, final)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise


def _swap(new: Path, final: Path) -> None:
    """Move the complete folder `new` to `final`. A folder cannot be renamed over a non-empty
    one, so an old `final` is renamed aside first, restored if the second rename fails, and
    removed after it."""
    old = None
    if final.exists():
        old = new.with_name(new.name + _SWAPPED_ASIDE)  # unique, as `new` is
        os.rename(final, old)
    try:
        os.rename(new, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
