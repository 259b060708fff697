"""Locks on an object store as leases: an object holding {owner, expires_at, lease_s}, created and
taken over by conditional writes, renewed while held, released by a conditional delete (see
`S3Store.lock`)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from trainables.storage.base import json_bytes

if TYPE_CHECKING:
    from trainables.storage.s3 import S3Store

_POLL_S = (0.2, 1.0)  # a waiter's first and longest pause between looks at a held lock


class LeaseLost(RuntimeError):
    """Another process took over a lock whose holder failed to renew its lease in time: both may
    have written what the lock guards."""


class Lease(contextlib.AbstractContextManager):
    """One holding of the lock `key` of `store` (see `S3Store.lock`), for one `with` block."""

    def __init__(self, store: S3Store, key: str):
        self.store, self.key, self.uri = store, key, store.uri(key)
        self.owner, self.etag, self.lost = owner_token(), "", ""
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name=f"lease {self.uri}", daemon=True)

    def _put(self, **condition: str) -> str | None:
        lease_s = self.store.lease_s
        body = json_bytes({"owner": self.owner, "expires_at": time.time() + lease_s, "lease_s": lease_s})
        return self.store.put_if(self.key, body, **condition)

    def __enter__(self) -> None:
        pause, first_seen = min(_POLL_S[0], self.store.lease_s / 4), {}  # ETag -> when first seen here
        while not (etag := self._put(IfNoneMatch="*")):
            held = self._read()
            if held is None:
                continue  # released meanwhile: try again at once
            lease, etag = held
            if lease.get("owner") == self.owner:
                break  # our own PUT, retried after its answer was lost
            since = first_seen.setdefault(etag, time.monotonic())
            lease_s = float(lease.get("lease_s", self.store.lease_s))
            if float(lease.get("expires_at", 0)) <= time.time() or time.monotonic() - since > lease_s:
                if etag := self._put(IfMatch=etag):
                    break  # took over an expired lease; a competing waiter got 412
                continue
            time.sleep(pause)
            pause = min(pause * 1.5, _POLL_S[1], self.store.lease_s / 4)  # a freed lock is seen soon
        self.etag = etag
        self._renewer.start()

    def _read(self) -> tuple[dict[str, Any], str] | None:
        try:
            data, etag = self.store.get_with_etag(self.key)
        except FileNotFoundError:
            return None
        try:
            lease = json.loads(data)
        except ValueError:
            lease = {}  # not a lease (an empty file a local store left): treated as expired
        return (lease if isinstance(lease, dict) else {}), etag

    def _renew(self) -> None:
        while not self._stop.wait(self.store.lease_s / 3):
            try:
                etag = self._put(IfMatch=self.etag)
            except OSError:
                continue  # a network failure: the lease lasts lease_s, the next try may succeed
            if etag is None:
                held = None
                with contextlib.suppress(OSError):  # only to name the new holder
                    held = self._read()
                self.lost = f"renewal failed: now held by {held[0].get('owner') if held else 'nobody'}"
                return
            self.etag = etag

    def __exit__(self, *exc_info: Any) -> None:  # LeaseLost, if raised, chains the block's error
        self._stop.set()
        self._renewer.join()
        if not self.lost and not self.store.delete_if(self.key, etag=self.etag):  # only if still ours
            self.lost = "taken over before release"
        if self.lost:
            raise LeaseLost(f"{self.uri}: lease of {self.owner} lost ({self.lost}); "
                            "what was written under the lock may have raced with another holder")


def owner_token() -> str:
    """Who holds a lease or wrote a marker: host, process and a fresh token."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
