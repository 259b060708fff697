"""Reading sweep input within bounds: YAML bombs, deep nesting, duplicate keys, encodings."""
from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import psutil
import pytest

from orchestrator.cli import main
from orchestrator.specs import SpecError, load_sweep, parse_override
from orchestrator.sweep_input import MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES

HEAD = "name: bomb\nworkdir: {workdir}\nmodel: lenet_300_100\ndataset: digits\n"


def _laughs(indent: str) -> str:
    """Nine levels of nine aliases each: 9**9 (387 million) strings in about 600 bytes."""
    lines = [f"{indent}- &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{indent}- &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


BOMBS = {
    "train.epochs": "train:\n  epochs:\n" + _laughs("    "),
    "prune.exclude": "prune:\n  exclude:\n" + _laughs("    "),
    "analysis.options.linear_cka.x": "analysis:\n  options:\n    linear_cka:\n      x:\n" + _laughs("        "),
}


@pytest.mark.parametrize("field", sorted(BOMBS))
def test_a_yaml_bomb_is_refused_quickly_in_little_memory(tmp_path, field):
    path = tmp_path / "bomb.yaml"
    path.write_text(HEAD.format(workdir=tmp_path / "w") + BOMBS[field])
    assert path.stat().st_size < 800
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(SpecError) as info:
            load_sweep(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2
    assert peak < 20 * 2**20
    assert info.value.errors == [
        f"{field}: expands to 490,329,055 values, more than the {MAX_VALUES:,} a sweep may have "
        "(YAML aliases count once per use)"]
    assert len(str(info.value)) < 300


def _run_bounded(cmd: list[str], *, max_rss: int, timeout_s: float) -> tuple[int, str, int]:
    """Run `cmd`, killing it past `max_rss` bytes or `timeout_s`: (exit code, stderr, peak RSS)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched, peak, start = psutil.Process(proc.pid), 0, time.monotonic()
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if peak > max_rss or time.monotonic() - start > timeout_s:
            proc.kill()
        time.sleep(0.05)
    return proc.wait(), proc.stderr.read(), peak


def test_impsweep_run_refuses_a_yaml_bomb_with_exit_2(tmp_path):
    workdir = tmp_path / "w"
    path = tmp_path / "bomb.yaml"
    path.write_text(HEAD.format(workdir=workdir) + BOMBS["train.epochs"])
    script = Path(sys.executable).with_name("impsweep")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator"]
    # The CLI imports torch, Ray and MLflow (about 1 GB); unbounded, the bomb grows past 6 GB.
    code, err, peak = _run_bounded(cmd + ["run", str(path)], max_rss=3 * 2**30, timeout_s=120)
    assert code == 2, err[-2000:]
    assert "train.epochs: expands to 490,329,055 values" in err
    assert peak < 2.5 * 2**30
    assert not workdir.exists()


def test_a_self_referencing_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text(HEAD.format(workdir=tmp_path / "w") + "prune:\n  exclude: &x [bias, *x]\n")
    with pytest.raises(SpecError, match=rf"prune.exclude(\[1\])+: nested deeper than {MAX_DEPTH} levels"):
        load_sweep(path)


def test_deep_nesting_is_refused_before_python_recursion_fails(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text(HEAD.format(workdir=tmp_path / "w") + "train: {epochs: " + "[" * 5000 + "]" * 5000 + "}\n")
    with pytest.raises(SpecError, match=f"nested deeper than {MAX_DEPTH} levels"):
        load_sweep(path)
    with pytest.raises(SpecError, match=f"nested deeper than {MAX_DEPTH} levels"):
        parse_override("train.epochs=" + "[" * 5000 + "]" * 5000)


def test_every_duplicate_key_is_reported_at_once_with_its_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(HEAD.format(workdir=tmp_path / "w")
                    + "train:\n  epochs: 2\n  lr: 0.1\n  epochs: 3\nseed: 1\nseed: 2\n")
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    assert info.value.errors == [
        "duplicate key 'epochs' at line 8 (first at line 6); each key may appear once",
        "duplicate key 'seed' at line 10 (first at line 9); each key may appear once",
    ]


def test_a_merge_key_may_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(HEAD.format(workdir=tmp_path / "w")
                    + "train: &t {epochs: 1, lr: 0.05}\nsmoke: {train: {<<: *t, epochs: 2}}\n")
    assert load_sweep(path).lineages[0].train.epochs == 1
    train = load_sweep(path, smoke=True).lineages[0].train
    assert (train.epochs, train.lr) == (2, 0.05)


def test_floats_with_exponents_are_floats(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(HEAD.format(workdir=tmp_path / "w") + "train: {lr: 1e-3, weight_decay: 5E-4}\n")
    train = load_sweep(path, overrides=["train.momentum=9e-1"]).lineages[0].train
    assert (train.lr, train.weight_decay, train.momentum) == (0.001, 0.0005, 0.9)


def test_a_file_that_is_not_utf8_or_too_large_exits_2_naming_the_problem(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(HEAD.format(workdir=tmp_path / "w").encode() + "# caf\xe9\n".encode("latin-1"))
    assert main(["status", str(path)]) == 2
    assert "the file is not UTF-8 text: byte 0xe9 at offset" in capsys.readouterr().err
    path.write_text(HEAD.format(workdir=tmp_path / "w") + "#" * MAX_FILE_BYTES + "\n")
    assert main(["status", str(path)]) == 2
    assert f"the file is larger than {MAX_FILE_BYTES} bytes" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_values_in_error_messages_are_shown_short():
    raw = {"name": "t", "workdir": "w", "model": "m" * 100_000, "dataset": "digits",
           "train": {"epochs": list(range(50_000))}, "analysis": {"measures": ["x" * 100_000]},
           "prune": {"layer_rates": {f"fc{i}": 2.0 for i in range(10_000)}}}
    with pytest.raises(SpecError) as info:
        load_sweep(raw)
    assert len(info.value.errors) == 4
    assert all(len(e) < 400 for e in info.value.errors), [len(e) for e in info.value.errors]
    assert any(e.startswith("model: unknown model 'mmmm") for e in info.value.errors)
