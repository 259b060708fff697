"""The storage layer on a local disk: writes appear whole or not at all, killed writes leave only
temporaries that are then removed, committed groups keep the first copy, replaced groups leave no
mix, one lock holder at a time; and which workdirs name a store at all."""
from __future__ import annotations

import threading
import time
from unittest import mock

import pytest
import torch

from trainables.storage import DamagedFile, LocalStore, is_object_store, open_store, scheme_error


class _Killed(Exception):
    pass


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    store = LocalStore(tmp_path)
    store.write_json("deep/metrics.json", {"a": 1})
    with mock.patch("os.fsync", side_effect=_Killed), pytest.raises(_Killed):
        store.write_bytes("deep/metrics.json", b"half")
    assert store.read_json("deep/metrics.json") == {"a": 1}
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["metrics.json"]
    with pytest.raises(FileNotFoundError):
        store.read_bytes("deep/absent.json")


def test_torch_round_trip_loads_weights_only(tmp_path):
    store = LocalStore(tmp_path)
    store.save_torch("state.pt", {"w": torch.arange(3.0), "step": 2})
    loaded = store.load_torch("state.pt")
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["step"] == 2
    torch.save({"f": _Killed}, tmp_path / "state.pt")  # a pickled class
    with pytest.raises(Exception, match="Weights only load failed"):
        store.load_torch("state.pt")


def test_a_damaged_torch_file_is_found_instead_of_loaded(tmp_path):
    store, path = LocalStore(tmp_path), tmp_path / "progress.pt"
    state = {"w": torch.arange(4096.0), "step": torch.tensor(3.0), "losses": [0.5], "opt": {0: {"m": torch.ones(2)}}}
    store.save_torch("progress.pt", state)
    loaded = store.load_torch("progress.pt")
    assert set(loaded) == set(state) and torch.equal(loaded["w"], state["w"])
    data = bytearray(path.read_bytes())
    offset = data.index(torch.arange(4096.0)[1000:1002].numpy().tobytes())  # inside the tensor's bytes
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["w"], state["w"])  # torch alone loads it
    with pytest.raises(DamagedFile, match="do not match the digest"):
        store.load_torch("progress.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pt")  # written before digests: loaded as it is
    assert torch.equal(store.load_torch("legacy.pt")["w"], torch.ones(2))


def test_set_aside_keeps_every_damaged_copy(tmp_path):
    store = LocalStore(tmp_path)
    for k in range(3):
        (tmp_path / "L01").mkdir()
        assert store.set_aside("L01") == ["L01.corrupt", "L01.corrupt.1", "L01.corrupt.2"][k]
    store.write_bytes("abc", b"abc")
    assert store.sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_listing_leaves_out_temporaries_and_locks(tmp_path):
    store = LocalStore(tmp_path)
    store.write_bytes("t/a/x.parquet", b"1")
    store.write_bytes("t/b.parquet", b"2")
    (tmp_path / "t" / ".b.parquet.q2.tmp").write_bytes(b"half")
    with store.lock("t/.lock"):
        assert store.list_files("t") == ["t/a/x.parquet", "t/b.parquet"]
        assert store.list_children("t") == ["a", "b.parquet"]
    assert store.list_files("absent") == [] and store.list_children("absent") == []
    assert store.read_head("t/b.parquet", 10) == b"2"
    before = store.version("t/b.parquet")
    time.sleep(0.01)
    store.write_bytes("t/b.parquet", b"22")
    assert store.version("t/b.parquet") != before


def test_remove_temporaries_deletes_what_killed_writes_left(tmp_path):
    (tmp_path / ".L01.x7f3.tmp").mkdir()
    (tmp_path / ".L01.x7f3.tmp" / "state.pt").write_bytes(b"half")
    (tmp_path / "L00").mkdir()
    (tmp_path / "L00" / ".metrics.json.q2.tmp").write_bytes(b"half")
    (tmp_path / "L00" / "metrics.json").write_bytes(b"{}")
    store = LocalStore(tmp_path)
    assert store.remove_temporaries("") == 2
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["L00", "L00/metrics.json"]
    assert store.remove_temporaries("absent") == 0


def test_commit_group_is_all_or_nothing_and_keeps_the_first_copy(tmp_path):
    store = LocalStore(tmp_path)

    def files():
        yield "state.pt", b"first part"
        raise _Killed

    with pytest.raises(_Killed):
        store.commit_group("L00", dict(files()))
    assert list(tmp_path.iterdir()) == [] and not store.is_committed("L00")
    assert store.commit_group("L00", {"state.pt": b"first"}) is True
    assert store.commit_group("L00", {"state.pt": b"second"}) is False
    assert store.read_bytes("L00/state.pt") == b"first" and store.is_committed("L00")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["L00"]


def test_replace_group_swaps_whole_folders_and_cleans_up_a_killed_swap(tmp_path):
    store = LocalStore(tmp_path)
    store.replace_group("reports/s1", {"index.html": b"old", "a.png": b"A"})
    # What a replacement killed between its two renames leaves: its build folder, the old aside.
    (tmp_path / "reports" / ".s1.abc.tmp").mkdir()
    (tmp_path / "reports" / ".s1.def.tmp.old").mkdir()
    with mock.patch("trainables.storage.local._swap", side_effect=_Killed), pytest.raises(_Killed):
        store.replace_group("reports/s1", {"index.html": b"broken"})
    assert store.read_bytes("reports/s1/index.html") == b"old"
    store.replace_group("reports/s1", {"index.html": b"new"})
    assert store.list_files("reports/s1") == ["reports/s1/index.html"]
    assert store.read_bytes("reports/s1/index.html") == b"new"
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [".s1.lock", "s1"]
    assert (tmp_path / "reports" / "s1").stat().st_mode & 0o777 == 0o755


def test_a_lock_admits_one_holder_at_a_time(tmp_path):
    # flock locks belong to open files, so a second open in another thread contends like
    # another process would.
    store, held, order = LocalStore(tmp_path), threading.Event(), []

    def hold():
        with store.lock("sub/.lock"):
            held.set()
            time.sleep(0.3)
            order.append("first released")

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(timeout=10)
    with store.lock("sub/.lock"):
        order.append("second acquired")
    holder.join()
    assert order == ["first released", "second acquired"]


@pytest.mark.parametrize("workdir, error", [
    ("runs/w", None), ("/abs/w", None), ("s3://bucket-1/prefix/w", None), ("s3://bucket-1", None),
    ("gs://bucket/w", "scheme 'gs' is not supported"), ("hdfs://n/w", "scheme 'hdfs' is not supported"),
    ("s3://", "is not an S3 bucket name"), ("s3://Bad_Bucket/w", "is not an S3 bucket name"),
])
def test_which_workdirs_name_a_store(workdir, error):
    assert (scheme_error(workdir) is None) == (error is None)
    if error is not None:
        assert error in scheme_error(workdir)
        with pytest.raises(ValueError, match=f"workdir {workdir!r}: "):
            open_store(workdir)
    assert is_object_store(workdir) == ("://" in workdir)
    if "://" not in workdir:
        assert isinstance(open_store(workdir), LocalStore)


def test_the_object_store_lease_comes_from_the_environment(monkeypatch):
    from trainables.storage import DEFAULT_LEASE_S, LEASE_ENV, lease_seconds

    monkeypatch.delenv(LEASE_ENV, raising=False)
    assert lease_seconds() == DEFAULT_LEASE_S == open_store("s3://bucket-1/w").lease_s
    monkeypatch.setenv(LEASE_ENV, "5")
    assert open_store("s3://bucket-1/w").lease_s == 5.0
    for bad in ("0", "-1", "inf", "nan", "soon"):
        monkeypatch.setenv(LEASE_ENV, bad)
        with pytest.raises(ValueError, match=f"{LEASE_ENV}={bad!r}: expected a positive number of seconds"):
            open_store("s3://bucket-1/w")
