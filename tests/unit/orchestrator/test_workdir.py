"""A workdir that cannot be written, and a sweep name too long for a folder, are bad input: exit
2 naming the field, before anything is written."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.specs import MAX_NAME_CHARS, SpecError, load_sweep

BASE = {"name": "t", "model": "lenet_300_100", "dataset": "digits", "train": {"epochs": 1}, "prune": {"levels": 1}}


def _sweep_file(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, **fields}))
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("verb", ["run", "analyze", "report"])
def test_a_workdir_that_is_or_lies_under_a_file_exits_2(tmp_path, capsys, verb):
    (tmp_path / "afile").write_text("x")
    for workdir, problem in [(tmp_path / "afile", "is a file"),
                             (tmp_path / "afile" / "sub" / "w", f"lies under '{tmp_path / 'afile'}', which is a file")]:
        path = _sweep_file(tmp_path, workdir=str(workdir))
        before = _listing(tmp_path)
        assert main([verb, str(path)]) == 2
        assert f"workdir: '{workdir}' {problem}; expected a folder" in capsys.readouterr().err
        assert _listing(tmp_path) == before


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_a_workdir_that_cannot_be_written_exits_2(tmp_path, capsys):
    # The tests run as root, which chmod does not stop; /proc refuses new entries to root too.
    path = _sweep_file(tmp_path, workdir="/proc/impsweep-test/w")
    assert main(["run", str(path)]) == 2
    assert "workdir: '/proc/impsweep-test/w' cannot be created: '/proc' is not writable" in capsys.readouterr().err
    assert not Path("/proc/impsweep-test").exists()


def test_a_name_too_long_for_the_file_system_exits_2(tmp_path, capsys):
    workdir = tmp_path / ("n" * 300) / "w"
    assert main(["run", str(_sweep_file(tmp_path, workdir=str(workdir)))]) == 2
    err = capsys.readouterr().err
    assert "workdir: the name 'nnnnnnnn" in err and "' is longer than the 255 bytes a file name may have there" in err
    assert _listing(tmp_path) == ["s.yaml"]


def test_a_sweep_name_is_at_most_100_characters(tmp_path, capsys):
    assert MAX_NAME_CHARS == 100
    load_sweep({**BASE, "workdir": "w", "name": "n" * MAX_NAME_CHARS})
    with pytest.raises(SpecError, match="name: String should have at most 100 characters"):
        load_sweep({**BASE, "workdir": "w", "name": "n" * 300})
    workdir = tmp_path / "w"
    assert main(["run", str(_sweep_file(tmp_path, workdir=str(workdir), name="n" * 300))]) == 2
    assert "name: String should have at most 100 characters" in capsys.readouterr().err
    assert not workdir.exists()
