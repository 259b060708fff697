"""What every workdir store offers: keys relative to the workdir, whole-or-nothing writes, groups
of files committed together, locks; and the typed reads and writes built on bytes."""
from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import json
from collections.abc import Mapping
from typing import Any

import torch

COMMIT_MARKER = ".committed"  # the object an object store writes last to commit a group
DIGEST_KEY = "content_sha256"  # the digest `save_torch` stores with the contents


class DamagedFile(ValueError):
    """A file whose contents do not match the digest written with them."""


class Store(abc.ABC):
    """One workdir's storage. A key is a '/'-separated path relative to the workdir
    (`trainables.layout` names them). Every write appears whole or not at all; a group of files
    (`commit_group`) appears once all of it is stored, and readers see only committed groups."""

    root: str
    # Whether the store itself guarantees that a file reads back as written (an object store
    # checksums every upload and keeps it intact); a local disk does not, so readers check digests.
    keeps_integrity: bool = False

    # -- files ------------------------------------------------------------------------------
    @abc.abstractmethod
    def uri(self, key: str = "") -> str:
        """The key's full location (a local path, or `s3://bucket/prefix/key`), for libraries
        that read it themselves (polars, pyarrow, Ray Tune)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a file is stored at `key`."""

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The file's bytes; FileNotFoundError naming its location if there is none."""

    @abc.abstractmethod
    def read_head(self, key: str, size: int) -> bytes:
        """The first `size` bytes of the file (fewer if it is shorter)."""

    @abc.abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Create or replace the file: readers see the old file or the new one, never a part."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete a file (nothing if it is gone)."""

    @abc.abstractmethod
    def delete_tree(self, prefix: str) -> None:
        """Delete every file under the folder `prefix`."""

    @abc.abstractmethod
    def list_files(self, prefix: str) -> list[str]:
        """Keys of every file under the folder `prefix`, at any depth, sorted (without the
        temporaries, markers and locks of the store's own bookkeeping)."""

    @abc.abstractmethod
    def list_children(self, prefix: str) -> list[str]:
        """Names of the files and folders directly in the folder `prefix`, sorted (likewise)."""

    @abc.abstractmethod
    def version(self, key: str) -> str:
        """A token that changes whenever the file is written again (size and mtime, or ETag)."""

    @abc.abstractmethod
    def set_aside(self, key: str, *, suffix: str = ".corrupt") -> str:
        """Move a damaged file or group out of every reader's way to `<key><suffix>` (`.1`,
        `.2`, ... when taken), kept for inspection. Returns the new key."""

    # -- groups of files ----------------------------------------------------------------------
    @abc.abstractmethod
    def commit_group(self, prefix: str, files: Mapping[str, bytes]) -> bool:
        """Store `files` (name -> bytes) as the folder `prefix`, all or nothing. A group already
        committed there (an identical one written by an earlier attempt) is kept: returns
        False, and True when this call committed it."""

    @abc.abstractmethod
    def is_committed(self, prefix: str) -> bool:
        """Whether the folder `prefix` is a complete, committed group."""

    @abc.abstractmethod
    def replace_group(self, prefix: str, files: Mapping[str, bytes]) -> None:
        """Create or replace the group `prefix` with `files`, which are its only files afterwards."""

    # -- concurrency ------------------------------------------------------------------------
    @abc.abstractmethod
    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """A `with` block in which this process alone holds the lock `key`; others wait. A holder
        that dies releases it (at once on a local disk, within its lease on an object store)."""

    @abc.abstractmethod
    def remove_temporaries(self, prefix: str) -> int:
        """Delete what writes killed mid-way left under `prefix`; call it under the folder's lock.
        Returns how many were removed."""

    # -- typed reads and writes -----------------------------------------------------------------
    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, obj: Any) -> None:
        """`obj` as indented, sorted-key JSON."""
        self.write_bytes(key, json_bytes(obj))

    def save_torch(self, key: str, obj: dict[str, Any]) -> None:
        """`torch.save(obj)`, with a digest of its contents under DIGEST_KEY, so that
        `load_torch` finds a damaged file instead of loading it (torch's format checks no sums:
        flipped bytes inside a tensor load as other values)."""
        buffer = io.BytesIO()
        torch.save({**obj, DIGEST_KEY: content_digest(obj)}, buffer)
        self.write_bytes(key, buffer.getvalue())

    def load_torch(self, key: str, map_location: str | torch.device = "cpu") -> Any:
        """A torch file (tensors and plain containers only: `weights_only=True`). What
        `save_torch` wrote is checked against its digest (DamagedFile) and returned without it."""
        return torch_from_bytes(self.read_bytes(key), where=self.uri(key), map_location=map_location)

    def sha256(self, key: str) -> str:
        return hashlib.sha256(self.read_bytes(key)).hexdigest()


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def torch_bytes(obj: Any) -> bytes:
    """`torch.save(obj)` into bytes (no digest: for files whose digest is stored beside them)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def torch_from_bytes(data: bytes, *, where: str, map_location: str | torch.device = "cpu") -> Any:
    """`load_torch` of bytes read from `where` (named in errors)."""
    obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    if isinstance(obj, dict) and DIGEST_KEY in obj:
        obj = dict(obj)
        if obj.pop(DIGEST_KEY) != content_digest(obj):
            raise DamagedFile(f"{where}: its contents do not match the digest written with them")
    return obj


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


def join(*parts: str) -> str:
    """Keys joined with '/', empty parts dropped."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))
