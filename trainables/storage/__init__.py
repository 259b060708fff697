"""The one door to the workdir: `open_store(workdir)` gives its `Store`, through which every read,
write, listing, commit of a group of files and lock under the workdir goes.

A workdir is a local path (a node's disk or a shared mount: `LocalStore`) or an object-store
prefix `s3://bucket/prefix` (`S3Store`; credentials and endpoint from the standard `AWS_*`
environment, `AWS_ENDPOINT_URL` included). Keys are paths relative to the workdir, named by
`trainables.layout`; this package decides how they are stored, never where.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from trainables.storage.base import (COMMIT_MARKER, DIGEST_KEY, DamagedFile, Store, content_digest, join,
                                     json_bytes, torch_bytes, torch_from_bytes)
from trainables.storage.local import LocalStore

__all__ = ["COMMIT_MARKER", "DEFAULT_LEASE_S", "DIGEST_KEY", "DamagedFile", "LEASE_ENV", "LocalStore", "Store",
           "as_store", "content_digest", "is_object_store", "join", "json_bytes", "lease_seconds", "local_folder",
           "open_store", "scheme_error", "torch_bytes", "torch_from_bytes"]

SCHEMES = ("s3",)  # object stores a workdir may be on
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme_error(workdir: str | os.PathLike) -> str | None:
    """Why `workdir` names no usable store (an unknown scheme, an S3 URI without a bucket), or
    None for a local path or a usable object-store URI."""
    text = os.fspath(workdir)
    match = _SCHEME.match(text)
    if match is None:
        return None
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        return (f"scheme {scheme!r} is not supported; expected a local path (or shared mount) or one of "
                f"{[s + '://bucket/prefix' for s in SCHEMES]}")
    bucket = text[match.end():].split("/", 1)[0]
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        return f"{bucket!r} is not an S3 bucket name; expected s3://<bucket>/<prefix>"
    return None


def is_object_store(workdir: str | os.PathLike) -> bool:
    """Whether `workdir` is an object-store URI (the local disk then holds no result)."""
    return _SCHEME.match(os.fspath(workdir)) is not None


def as_store(workdir: str | os.PathLike | Store) -> Store:
    """`workdir`'s store (a Store is returned as it is: callers that open many lineages share one)."""
    return workdir if isinstance(workdir, Store) else open_store(workdir)


LEASE_ENV = "IMPSWEEP_LEASE_S"  # how long an object-store lock outlives a holder that died
DEFAULT_LEASE_S = 60.0


def lease_seconds() -> float:
    """The lease of object-store locks: `IMPSWEEP_LEASE_S` (seconds), default 60. A holder that
    dies blocks the next for at most this long; it renews its lease every third of it."""
    raw = os.environ.get(LEASE_ENV)
    if raw is None:
        return DEFAULT_LEASE_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{LEASE_ENV}={raw!r}: expected a positive number of seconds")
    return value


def open_store(workdir: str | os.PathLike) -> Store:
    """The store of `workdir`. Raises ValueError naming the workdir for an unusable URI."""
    error = scheme_error(workdir)
    if error is not None:
        raise ValueError(f"workdir {os.fspath(workdir)!r}: {error}")
    if is_object_store(workdir):
        from trainables.storage.s3 import S3Store  # boto3 only where an object store is used

        return S3Store(os.fspath(workdir), lease_s=lease_seconds())
    return LocalStore(workdir)


@contextlib.contextmanager
def local_folder(location: str | os.PathLike) -> Iterator[Path]:
    """A local folder holding the files of the folder `location` (a path or a URI), for
    libraries that read local files only: the folder itself when it is local, else a downloaded
    copy, removed afterwards."""
    if not is_object_store(location):
        yield Path(location)
        return
    store = open_store(location)
    with tempfile.TemporaryDirectory(prefix="impsweep-") as tmp:
        for key in store.list_files(""):
            path = Path(tmp, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(store.read_bytes(key))
        yield Path(tmp)
