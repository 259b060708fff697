"""The storage module: writes appear whole or not at all, killed writes leave only temporaries
that are then removed, committed folders keep the first copy, folder swaps leave no mix, one
lock holder at a time."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from trainables import storage


class _Killed(Exception):
    pass


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "metrics.json"
    storage.write_json(path, {"a": 1})

    def half(tmp):
        tmp.write_bytes(b"half")
        raise _Killed

    with pytest.raises(_Killed):
        storage.write_atomically(path, half)
    assert storage.read_json(path) == {"a": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


def test_torch_round_trip_loads_weights_only(tmp_path):
    path = tmp_path / "state.pt"
    storage.save_torch(path, {"w": torch.arange(3.0), "step": 2})
    loaded = storage.load_torch(path)
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["step"] == 2
    storage.write_atomically(path, lambda tmp: torch.save({"f": _Killed}, tmp))  # a pickled class
    with pytest.raises(Exception, match="Weights only load failed"):
        storage.load_torch(path)


def test_a_damaged_torch_file_is_found_instead_of_loaded(tmp_path):
    path = tmp_path / "progress.pt"
    state = {"w": torch.arange(4096.0), "step": torch.tensor(3.0), "losses": [0.5], "opt": {0: {"m": torch.ones(2)}}}
    storage.save_torch(path, state)
    loaded = storage.load_torch(path)
    assert set(loaded) == set(state) and torch.equal(loaded["w"], state["w"])
    data = bytearray(path.read_bytes())
    offset = data.index(torch.arange(4096.0)[1000:1002].numpy().tobytes())  # inside the tensor's bytes
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["w"], state["w"])  # torch alone loads it
    with pytest.raises(storage.DamagedFile, match="do not match the digest"):
        storage.load_torch(path)
    legacy = tmp_path / "legacy.pt"  # written before digests: loaded as it is
    torch.save({"w": torch.ones(2)}, legacy)
    assert torch.equal(storage.load_torch(legacy)["w"], torch.ones(2))


def test_set_aside_keeps_every_damaged_copy_and_files_hash(tmp_path):
    for k in range(3):
        (tmp_path / "L01").mkdir()
        assert storage.set_aside(tmp_path / "L01").name == ["L01.corrupt", "L01.corrupt.1", "L01.corrupt.2"][k]
    (tmp_path / "abc").write_bytes(b"abc")
    assert storage.sha256_file(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_remove_temporaries_deletes_what_killed_writes_left(tmp_path):
    (tmp_path / ".L01.x7f3.tmp").mkdir()
    (tmp_path / ".L01.x7f3.tmp" / "state.pt").write_bytes(b"half")
    (tmp_path / "L00").mkdir()
    (tmp_path / "L00" / ".metrics.json.q2.tmp").write_bytes(b"half")
    (tmp_path / "L00" / "metrics.json").write_bytes(b"{}")
    assert storage.remove_temporaries(tmp_path) == 2
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["L00", "L00/metrics.json"]
    assert storage.remove_temporaries(tmp_path / "absent") == 0


def test_commit_dir_is_all_or_nothing_and_keeps_the_first_copy(tmp_path):
    final = tmp_path / "L00"

    def half(folder):
        (folder / "state.pt").write_bytes(b"first part")
        raise _Killed

    with pytest.raises(_Killed):
        storage.commit_dir(final, half)
    assert list(tmp_path.iterdir()) == []
    storage.commit_dir(final, lambda folder: (folder / "state.pt").write_bytes(b"first"))
    storage.commit_dir(final, lambda folder: (folder / "state.pt").write_bytes(b"second"))
    assert (final / "state.pt").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["L00"]


def test_replace_dir_swaps_whole_folders_and_cleans_up_a_killed_swap(tmp_path):
    final = tmp_path / "reports" / "s1"
    storage.replace_dir(final, lambda folder: (folder / "index.html").write_text("old"))
    # What a replacement killed between its two renames leaves: its build folder, the old aside.
    (final.parent / ".s1.abc.tmp").mkdir()
    (final.parent / ".s1.def.tmp.old").mkdir()

    def fail(folder):
        (folder / "index.html").write_text("broken")
        raise _Killed

    with pytest.raises(_Killed):
        storage.replace_dir(final, fail)
    assert (final / "index.html").read_text() == "old"
    storage.replace_dir(final, lambda folder: (folder / "index.html").write_text("new"))
    assert (final / "index.html").read_text() == "new"
    assert sorted(p.name for p in final.parent.iterdir()) == [".s1.lock", "s1"]
    assert final.stat().st_mode & 0o777 == 0o755


def test_exclusive_lock_admits_one_holder_at_a_time(tmp_path):
    # flock locks belong to open files, so a second open in another thread contends like
    # another process would.
    lock = tmp_path / "sub" / ".lock"
    held, order = threading.Event(), []

    def hold():
        with storage.exclusive_lock(lock):
            held.set()
            time.sleep(0.3)
            order.append("first released")

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(timeout=10)
    with storage.exclusive_lock(lock):
        order.append("second acquired")
    holder.join()
    assert order == ["first released", "second acquired"]
