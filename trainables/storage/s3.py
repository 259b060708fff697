"""A workdir in an S3 bucket (`s3://bucket/prefix`): every file one PUT (atomic per object), a
group of files committed by a marker object written last, locks as leases held in objects."""
from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from trainables.storage.base import COMMIT_MARKER, Store, join, json_bytes
from trainables.storage.lease import Lease, owner_token

LOCK_SUFFIX = ".lock"  # a lock key's name ends so, and listings skip such names
_PAGE = 1000  # keys per list page and per batched delete (S3's maximum for both)
_MISSING = {"404", "NoSuchKey", "NotFound"}
# a condition did not hold: 412; 404 for an `IfMatch` on a deleted object; 409 when S3 sees
# concurrent conditional writes of one key (one of them wins)
_CONFLICT = {"PreconditionFailed", "412", "NoSuchKey", "404", "ConditionalRequestConflict", "409"}


class S3Store(Store):
    """The workdir `root` = `s3://bucket/prefix` (the prefix may be empty or nested). Its client
    comes from the standard environment (credentials, region, AWS_ENDPOINT_URL), made on first
    use so that a store pickles (to Ray workers), or is `client`, a boto3 S3 client to share
    (making one costs about 0.1 s). A lock's lease lasts `lease_s` seconds."""

    keeps_integrity = True  # S3 checks each upload's checksum and stores objects durably

    def __init__(self, root: str, *, lease_s: float = 60.0, client: Any = None):
        bucket, _, prefix = root[len("s3://"):].partition("/")
        if not root.startswith("s3://") or not bucket:
            raise ValueError(f"S3 root {root!r}: expected 's3://bucket' or 's3://bucket/prefix'")
        if not lease_s > 0:
            raise ValueError(f"lease_s={lease_s!r}: expected a positive number of seconds")
        self.bucket, self.prefix = bucket, "/".join(p for p in prefix.split("/") if p)
        self.root = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.lease_s = float(lease_s)
        self._client_lock, self._client = threading.Lock(), client

    def __repr__(self) -> str:
        return f"S3Store({self.root!r})"  # never the client: its repr could show credentials

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "lease_s": self.lease_s}  # a client does not pickle: made anew

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], lease_s=state["lease_s"])

    @property
    def client(self) -> Any:
        with self._client_lock:  # one client for all the store's threads (boto3 clients are thread-safe)
            if self._client is None:
                self._client = boto3.session.Session().client("s3")
            return self._client

    def object_key(self, key: str = "") -> str:
        return join(self.prefix, key)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}".rstrip("/")

    # -- files ------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except FileNotFoundError:
            return False
        return True

    def read_bytes(self, key: str) -> bytes:
        return self._get(key)["Body"].read()

    def read_head(self, key: str, size: int) -> bytes:
        if size <= 0:  # no Range names zero bytes
            self._head(key)  # FileNotFoundError if missing
            return b""
        try:
            return self._get(key, Range=f"bytes=0-{size - 1}")["Body"].read()
        except OSError as err:
            if _code(err.__cause__) == "InvalidRange":  # an empty object has no byte 0
                return b""
            raise

    def write_bytes(self, key: str, data: bytes) -> None:
        """One PUT: S3 stores an object whole or not at all."""
        self._put(key, data)

    def delete(self, key: str) -> None:
        with _named(self.uri(key)):  # S3 answers 204 for a missing object too
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def delete_tree(self, prefix: str) -> None:
        """Deletes the bookkeeping too (markers, leases), as removing a folder would."""
        self._delete_objects(self._keys(prefix, relative=False), where=self.uri(prefix))

    def list_files(self, prefix: str) -> list[str]:
        """Files of uncommitted groups are listed too: callers ask `is_committed` of a group."""
        start = len(self._folder(prefix)) - len(self._folder(""))  # of the part below the folder
        return sorted(k for k in self._keys(prefix) if not _bookkeeping(k[start:].split("/")))

    def list_children(self, prefix: str) -> list[str]:
        """A folder is listed once any object is under it (also an uncommitted group's folder)."""
        start, names = len(self._folder(prefix)), []
        for page in self._pages(prefix, Delimiter="/"):
            names += [o["Key"][start:] for o in page.get("Contents", [])]
            names += [p["Prefix"][start:-1] for p in page.get("CommonPrefixes", []) if p["Prefix"][start] != "."]
        return sorted(n for n in names if not _bookkeeping([n]))

    def version(self, key: str) -> str:
        head = self._head(key)
        return f"{head['ContentLength']}:{head['ETag']}"

    def set_aside(self, key: str, *, suffix: str = ".corrupt") -> str:
        """S3 has no rename: every object of the file or group is copied, then the originals are
        deleted, the commit marker first, so that no reader sees a committed group lose files."""
        moves = [(self.object_key(key), "")] if self.exists(key) else []
        moves += [(k, k[len(self._folder(key)) - 1:]) for k in self._keys(key, relative=False)]
        if not moves:
            raise FileNotFoundError(errno.ENOENT, "nothing to set aside", self.uri(key))
        aside, k = key + suffix, 1
        while self.exists(aside) or self._keys(aside):
            aside, k = f"{key}{suffix}.{k}", k + 1
        for source, rest in moves:
            with _named(self.uri(key)):
                self.client.copy_object(Bucket=self.bucket, Key=self.object_key(aside) + rest,
                                        CopySource={"Bucket": self.bucket, "Key": source})
        originals = sorted((source for source, _ in moves), key=lambda k: not k.endswith("/" + COMMIT_MARKER))
        self._delete_objects(originals, where=self.uri(key))  # in order: one batch holds up to 1000
        return aside

    # -- groups of files ----------------------------------------------------------------------
    def commit_group(self, prefix: str, files: Mapping[str, bytes]) -> bool:
        """The files are PUT, then the marker, conditionally (`IfNoneMatch="*"`): one committer
        wins. A cut-off upload (files, no marker) is invisible and overwritten by the next one.
        Two committers at once may overwrite each other's files (S3 cannot stage a folder): they
        hold a lock, or write the same bytes (as the retries of one level do)."""
        marker = join(prefix, COMMIT_MARKER)
        if self.exists(marker):
            return False
        for name, data in files.items():
            self.write_bytes(join(prefix, name), data)
        me = owner_token()
        if self._put(marker, json_bytes({"committer": me, "files": sorted(files)}), IfNoneMatch="*"):
            return True
        with contextlib.suppress(OSError, ValueError):  # a retried PUT whose first try succeeded gets 412 too
            return self.read_json(marker).get("committer") == me
        return False

    def is_committed(self, prefix: str) -> bool:
        return self.exists(join(prefix, COMMIT_MARKER))

    def replace_group(self, prefix: str, files: Mapping[str, bytes]) -> None:
        """Unlike on a disk, a reader may see a mix of old and new files while this runs (S3 has
        no folder rename). One replacement of a folder runs at a time (a lock beside it)."""
        parent, _, name = join(prefix).rpartition("/")
        with self.lock(join(parent, f".{name}{LOCK_SUFFIX}")):
            for file, data in files.items():
                self.write_bytes(join(prefix, file), data)
            keep = {self.object_key(join(prefix, f)) for f in [*files, COMMIT_MARKER]}
            old = [k for k in self._keys(prefix, relative=False) if k not in keep]
            self._delete_objects(old, where=self.uri(prefix))
            self.write_bytes(join(prefix, COMMIT_MARKER), json_bytes({"files": sorted(files)}))

    # -- concurrency ------------------------------------------------------------------------
    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """A lease: the object `key` (its name ends in `.lock`) holding {owner, expires_at,
        lease_s}, created by a conditional PUT (`IfNoneMatch="*"`): S3 applies conditional writes
        atomically (since 2024), so one of several takers wins. A waiter polls until the object
        is gone or its lease expired, then takes it over by a PUT `IfMatch` its ETag (again one
        winner). The holder renews it every lease_s/3, so a holder that dies blocks others for
        at most lease_s; one that failed to renew in time and was taken over gets LeaseLost when
        it leaves the block. Expiry trusts `expires_at` (clocks in sync) or a lease seen
        unchanged for its lease_s (so a holder whose clock runs ahead blocks no longer)."""
        if not key.rsplit("/", 1)[-1].endswith(LOCK_SUFFIX):
            raise ValueError(f"lock key {key!r}: its name must end with {LOCK_SUFFIX!r} (so listings skip it)")
        return Lease(self, key)

    def remove_temporaries(self, prefix: str) -> int:
        """Nothing to remove: a PUT is atomic, and a group cut off mid-upload is invisible (no
        marker) and overwritten by the next commit. Returns 0."""
        return 0

    # -- requests -----------------------------------------------------------------------------
    def _head(self, key: str) -> dict[str, Any]:
        with _named(self.uri(key)):
            return self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and its ETag (what a conditional write or delete names)."""
        answer = self._get(key)
        return answer["Body"].read(), answer["ETag"]

    def put_if(self, key: str, data: bytes, **condition: str) -> str | None:
        """A conditional PUT (`IfNoneMatch="*"` or `IfMatch=<ETag>`): the new ETag, or None when
        the condition did not hold."""
        return self._put(key, data, **condition)

    def delete_if(self, key: str, *, etag: str) -> bool:
        """Delete the object only while its ETag is `etag`; False when it is not (or gone)."""
        try:
            with _named(self.uri(key)):
                self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key), IfMatch=etag)
        except OSError as err:
            if _code(err.__cause__) not in _CONFLICT:
                raise
            return False
        return True

    def _get(self, key: str, **options: str) -> dict[str, Any]:
        with _named(self.uri(key)):
            return self.client.get_object(Bucket=self.bucket, Key=self.object_key(key), **options)

    def _put(self, key: str, data: bytes, **condition: str) -> str | None:
        """The new ETag; None when the condition (`IfNoneMatch`, `IfMatch`) did not hold."""
        try:
            with _named(self.uri(key)):
                return self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data,
                                              **condition)["ETag"]
        except OSError as err:
            if condition and _code(err.__cause__) in _CONFLICT:
                return None
            raise

    def _folder(self, prefix: str) -> str:
        folder = self.object_key(prefix)
        return folder + "/" if folder else ""

    def _pages(self, prefix: str, **options: Any) -> Iterator[dict[str, Any]]:
        with _named(self.uri(prefix)):
            yield from self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._folder(prefix), MaxKeys=_PAGE, **options)

    def _keys(self, prefix: str, *, relative: bool = True) -> list[str]:
        """Every object key under the folder (relative to the root, or whole), bookkeeping too."""
        skip = len(self._folder("")) if relative else 0
        return [o["Key"][skip:] for page in self._pages(prefix) for o in page.get("Contents", [])
                if not o["Key"].endswith("/")]  # not the empty 'folder' objects some tools create

    def _delete_objects(self, keys: list[str], *, where: str) -> None:
        for i in range(0, len(keys), _PAGE):
            with _named(where):
                errors = self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[i:i + _PAGE]], "Quiet": True}).get("Errors")
            if errors:
                raise OSError(f"{where}: {len(errors)} objects not deleted, e.g. s3://{self.bucket}/"
                              f"{errors[0]['Key']}: {errors[0].get('Code')} {errors[0].get('Message')}")


@contextlib.contextmanager
def _named(uri: str) -> Iterator[None]:
    """S3's errors as OSErrors naming `uri` (FileNotFoundError for a missing object), the S3
    error their `__cause__`."""
    try:
        yield
    except ClientError as err:
        if _code(err) in _MISSING:
            raise FileNotFoundError(errno.ENOENT, "no such object", uri) from err
        message = err.response.get("Error", {}).get("Message", "")
        raise OSError(f"{uri}: S3 {err.operation_name} failed: {_code(err)} {message}".rstrip()) from err
    except BotoCoreError as err:
        raise OSError(f"{uri}: {err}") from err


def _code(err: BaseException | None) -> str:
    return str(err.response.get("Error", {}).get("Code", "")) if isinstance(err, ClientError) else ""


def _bookkeeping(parts: list[str]) -> bool:
    """Whether a key (its parts below the listed folder) is the store's own: a hidden name at
    any level (markers, `.lock`) or a lock (its file name ends in `.lock`)."""
    return any(p.startswith(".") for p in parts) or parts[-1].endswith(LOCK_SUFFIX)
