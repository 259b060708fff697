"""S3Store against a real moto server (one for the session): files, listings, groups,
set-aside, and lease locks between threads with stores of their own."""
from __future__ import annotations

import os
import pickle
import threading
import time
import uuid
from collections.abc import Mapping

import boto3
import pytest
import torch

from tests.integration.conftest import BUCKET
from trainables.storage import s3
from trainables.storage.base import COMMIT_MARKER
from trainables.storage.lease import LeaseLost
from trainables.storage.s3 import S3Store

pytestmark = pytest.mark.integration

LEASE_S = 1.0  # short leases keep the lock tests to about a second each


@pytest.fixture(scope="module")
def client(moto_endpoint):
    """One client for the stores of all tests: making one costs about 0.1 s, a request 5 ms."""
    return boto3.session.Session().client("s3")


@pytest.fixture
def root(moto_endpoint) -> str:
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/nested/"  # a nested prefix, trailing slash


@pytest.fixture
def store(root, client) -> S3Store:
    return S3Store(root, lease_s=LEASE_S, client=client)


def raw_keys(store: S3Store) -> list[str]:
    """Every object under the store's prefix, bookkeeping included, relative to it."""
    answer = store.client.list_objects_v2(Bucket=BUCKET, Prefix=store.prefix + "/")
    return sorted(o["Key"][len(store.prefix) + 1:] for o in answer.get("Contents", []))


# -- the root and files -----------------------------------------------------------------------
def test_the_root_is_normalised_and_bad_roots_are_refused():
    store = S3Store("s3://bkt//a/b/")
    assert (store.root, store.uri("x/y.pt"), store.uri()) == ("s3://bkt/a/b", "s3://bkt/a/b/x/y.pt", "s3://bkt/a/b")
    assert S3Store("s3://bkt").uri("k") == "s3://bkt/k"
    for bad in ("/tmp/work", "s3://", "s3:///prefix", "gs://bkt/x"):
        with pytest.raises(ValueError, match="S3 root"):
            S3Store(bad)


def test_bytes_json_and_torch_round_trip_under_the_prefix(root):
    store = S3Store(root)  # its client made from the environment, on first use
    store.write_bytes("a/b.bin", b"\x00\x01")
    store.write_json("a/c.json", {"x": [1, 2]})
    weights = {"w": torch.arange(6.0).reshape(2, 3), "step": torch.tensor(3)}
    store.save_torch("a/d.pt", {"model": weights})
    assert store.read_bytes("a/b.bin") == b"\x00\x01"
    assert store.read_json("a/c.json") == {"x": [1, 2]}
    torch.testing.assert_close(store.load_torch("a/d.pt")["model"], weights)
    assert raw_keys(store) == ["a/b.bin", "a/c.json", "a/d.pt"]  # objects at prefix/key
    assert pickle.loads(pickle.dumps(store)).read_bytes("a/b.bin") == b"\x00\x01"  # as shipped to a Ray worker


def test_version_changes_only_when_the_file_is_written(store):
    store.write_bytes("v", b"one")
    first = store.version("v")
    assert store.version("v") == first
    store.write_bytes("v", b"two")
    assert store.version("v") != first


def test_a_missing_file_raises_file_not_found_naming_its_uri(store):
    uri = store.uri("nope/x.pt")
    for read in (store.read_bytes, store.version, lambda k: store.read_head(k, 4), lambda k: store.read_head(k, 0)):
        with pytest.raises(FileNotFoundError, match=uri):
            read("nope/x.pt")
    assert not store.exists("nope/x.pt")
    store.delete("nope/x.pt")  # nothing to delete is fine


def test_other_s3_errors_are_os_errors_naming_the_uri(client):
    store = S3Store("s3://no-such-bucket-here/w", client=client)
    with pytest.raises(OSError, match=r"s3://no-such-bucket-here/w/f: S3 PutObject failed: NoSuchBucket"):
        store.write_bytes("f", b"1")


def test_read_head_reads_a_prefix_of_the_file(store):
    store.write_bytes("h", b"0123456789")
    store.write_bytes("empty", b"")
    assert [store.read_head("h", n) for n in (4, 100, 0)] == [b"0123", b"0123456789", b""]
    assert store.read_head("empty", 5) == b""


# -- listings ---------------------------------------------------------------------------------
def test_listings_skip_markers_locks_and_hidden_names(store):
    for key in ("a/x.json", "a/b/y.pt", "a/.hidden", "a/b/.tmp/z", "a/g/f", f"a/g/{COMMIT_MARKER}",
                "a/c.lock", "ab/elsewhere", "top"):
        store.write_bytes(key, b"1")
    with store.lock("a/.lock"):  # a held lease is bookkeeping too
        assert store.list_files("a") == ["a/b/y.pt", "a/g/f", "a/x.json"]
        assert store.list_children("a") == ["b", "g", "x.json"]
    assert store.list_children("") == ["a", "ab", "top"]
    assert store.list_files("absent") == [] and store.list_children("absent") == []


def test_delete_tree_deletes_everything_under_the_folder_page_by_page(root, monkeypatch):
    store = S3Store(root)  # a client of its own, to wrap
    monkeypatch.setattr(s3, "_PAGE", 2)  # S3 pages by 1000: five files make three pages here
    for key in ("t/1", "t/2", "t/u/3", "t/u/4", f"t/{COMMIT_MARKER}", "t2/keep"):
        store.write_bytes(key, b"1")
    batches = []
    delete_objects = store.client.delete_objects
    monkeypatch.setattr(store.client, "delete_objects",
                        lambda **kw: batches.append(len(kw["Delete"]["Objects"])) or delete_objects(**kw))
    store.delete_tree("t")
    assert raw_keys(store) == ["t2/keep"]
    assert batches == [2, 2, 1]


def test_set_aside_numbers_the_copies_and_moves_whole_groups(store):
    for k in range(3):
        store.write_bytes("p.pt", f"v{k}".encode())
        assert store.set_aside("p.pt") == ["p.pt.corrupt", "p.pt.corrupt.1", "p.pt.corrupt.2"][k]
    assert [store.read_bytes(k) for k in ("p.pt.corrupt", "p.pt.corrupt.1", "p.pt.corrupt.2")] == [b"v0", b"v1", b"v2"]
    assert store.commit_group("L01", {"state.pt": b"s", "sub/m.json": b"m"})
    assert store.set_aside("L01", suffix=".bad") == "L01.bad"
    assert not store.is_committed("L01") and store.list_files("L01") == []
    assert store.is_committed("L01.bad") and store.list_files("L01.bad") == ["L01.bad/state.pt", "L01.bad/sub/m.json"]
    with pytest.raises(FileNotFoundError, match=store.uri("gone")):
        store.set_aside("gone")


# -- groups -------------------------------------------------------------------------------------
class CutOff(Mapping):
    """The files of a group whose upload is cut off after `n` of them."""

    def __init__(self, files: dict[str, bytes], n: int):
        self.files, self.n = files, n

    def __getitem__(self, name):
        return self.files[name]

    def __len__(self):
        return len(self.files)

    def __iter__(self):
        for i, name in enumerate(self.files):
            if i == self.n:
                raise ConnectionError("upload cut off")
            yield name


def test_a_cut_off_commit_stays_invisible_and_the_next_commit_succeeds(store):
    files = {"state.pt": b"new state", "metrics.json": b"{}"}
    store.write_bytes("L00/state.pt", b"left by an older attempt")
    with pytest.raises(ConnectionError):
        store.commit_group("L00", CutOff(files, 1))
    assert store.exists("L00/state.pt") and not store.is_committed("L00")
    assert store.remove_temporaries("L00") == 0  # nothing to clean: the next commit overwrites
    assert store.commit_group("L00", files)
    assert store.is_committed("L00") and store.read_bytes("L00/state.pt") == b"new state"


def test_a_commit_cut_off_at_the_marker_stays_invisible(root, monkeypatch):
    store = S3Store(root)  # a client of its own, to wrap
    put = store.client.put_object

    def fail_on_the_marker(**kw):
        if kw["Key"].endswith(COMMIT_MARKER):
            raise ConnectionError("connection reset")
        return put(**kw)

    monkeypatch.setattr(store.client, "put_object", fail_on_the_marker)
    with pytest.raises(ConnectionError):
        store.commit_group("L02", {"state.pt": b"s"})
    assert store.read_bytes("L02/state.pt") == b"s" and not store.is_committed("L02")
    monkeypatch.setattr(store.client, "put_object", put)
    assert store.commit_group("L02", {"state.pt": b"s"}) and store.is_committed("L02")


def test_a_second_commit_keeps_the_first(store):
    assert store.commit_group("L03", {"state.pt": b"first"})
    assert not store.commit_group("L03", {"state.pt": b"second"})
    assert store.read_bytes("L03/state.pt") == b"first"


def test_of_concurrent_committers_exactly_one_wins(root, client):
    stores = [S3Store(root, client=client) for _ in range(3)]
    for group in ("L04", "L05", "L06"):
        start, results = threading.Barrier(3), []

        def commit(s: S3Store) -> None:
            start.wait()
            results.append(s.commit_group(group, {"state.pt": b"same bytes"}))

        threads = [threading.Thread(target=commit, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False, False, True] and stores[0].is_committed(group)


def test_replace_group_leaves_only_the_new_files(store):
    store.commit_group("reports/s", {"index.html": b"old", "fig1.png": b"1"})
    store.replace_group("reports/s", {"index.html": b"new", "fig2.png": b"2"})
    assert store.list_files("reports") == ["reports/s/fig2.png", "reports/s/index.html"]
    assert store.read_bytes("reports/s/index.html") == b"new" and store.is_committed("reports/s")
    assert raw_keys(store) == [f"reports/s/{COMMIT_MARKER}", "reports/s/fig2.png", "reports/s/index.html"]  # lock gone


# -- locks ----------------------------------------------------------------------------------------
@pytest.mark.timeout(30)  # a broken lock would wait forever
def test_a_lock_excludes_a_second_holder_until_the_first_leaves(root, client):
    events = []
    entered = threading.Event()

    def hold(name: str, hold_s: float, after: threading.Event | None) -> None:
        if after:
            after.wait()
        with S3Store(root, lease_s=LEASE_S, client=client).lock("lineages/x/.lock"):
            events.append((name, "in", time.monotonic()))
            entered.set()
            time.sleep(hold_s)  # longer than the lease: only its renewal keeps the second out
            events.append((name, "out", time.monotonic()))

    first = threading.Thread(target=hold, args=("first", 1.3 * LEASE_S, None))
    second = threading.Thread(target=hold, args=("second", 0, entered))
    for t in (first, second):
        t.start()
    for t in (first, second):
        t.join()
    assert [e[:2] for e in events] == [("first", "in"), ("first", "out"), ("second", "in"), ("second", "out")]
    assert raw_keys(S3Store(root, client=client)) == []  # released: the lease object is gone


@pytest.mark.timeout(30)  # a broken lock would wait forever
@pytest.mark.parametrize("expires_in_s", [LEASE_S, 3600.0])  # a dead holder; one whose clock runs an hour ahead
def test_a_dead_holder_blocks_the_next_for_at_most_its_lease(store, expires_in_s):
    store.write_json("a/.lock", {"owner": "deadhost:1:x", "expires_at": time.time() + expires_in_s, "lease_s": LEASE_S})
    start = time.monotonic()
    with store.lock("a/.lock"):
        waited_s = time.monotonic() - start
        _, pid, token = store.read_json("a/.lock")["owner"].split(":")  # ours now: host:pid:uuid
        assert pid == str(os.getpid()) and len(token) == 32
    assert 0.7 * LEASE_S <= waited_s < 3 * LEASE_S


def test_a_lease_taken_over_before_release_is_reported_on_exit(store):
    with pytest.raises(LeaseLost, match="taken over before release"):
        with store.lock("a/.lock"):
            store.write_json("a/.lock", {"owner": "thief", "expires_at": time.time() + 60, "lease_s": 60})
    assert store.read_json("a/.lock")["owner"] == "thief"  # the new holder's lease is left alone


def test_a_lease_lost_at_renewal_is_reported_on_exit(store):
    with pytest.raises(LeaseLost, match="now held by thief"):
        with store.lock("a/.lock"):
            store.write_json("a/.lock", {"owner": "thief", "expires_at": time.time() + 60, "lease_s": 60})
            time.sleep(0.6 * LEASE_S)  # the renewal, every lease_s/3, finds the lease taken
    assert store.read_json("a/.lock")["owner"] == "thief"


def test_a_lock_name_must_say_it_is_a_lock(store):
    with pytest.raises(ValueError, match="must end with '.lock'"):
        store.lock("a/state.pt")
