"""The console progress of a running sweep: counts of lineages and levels, epoch reports."""
from __future__ import annotations

from types import SimpleNamespace

from orchestrator.progress import ProgressCallback


def _level(lineage: str, level: int, **extra) -> dict:
    return {"lineage_id": lineage, "level": level, "n_levels": 3, "sparsity": 0.2 * level,
            "test_acc": 0.9, "wall_s": 1.5, "kind": "level", **extra}


def test_levels_epochs_and_lineages_are_counted(tmp_path):
    lines: list[str] = []
    progress = ProgressCallback(lines.append, expected=2, workdir=str(tmp_path))
    trial = SimpleNamespace(trial_id="t1", custom_dirname="c1-s0", local_path="/x", last_result=None)
    progress.on_trial_result(0, [], trial, _level("c1-s0", 0))
    # an epoch report of level 1 repeats level 0's values: it is not a finished level
    progress.on_trial_result(0, [], trial, _level("c1-s0", 0, kind="epoch", training_level=1,
                                                  training_epoch=2))
    progress.on_trial_result(0, [], trial, _level("c1-s0", 1))
    assert lines[0].startswith("[0/2 done, 1 running, 0 failed; levels 1/3+]")
    assert lines[1].endswith("c1-s0 L01 epoch 2") and "levels 1/3+" in lines[1]
    assert "L01: sparsity 0.200" in lines[2] and "levels 2/3+" in lines[2]
    trial.last_result = _level("c1-s0", 2)
    progress.on_trial_result(0, [], trial, trial.last_result)
    progress.on_trial_complete(0, [], trial)
    assert lines[-1] == "[1/2 done, 0 running, 0 failed; levels 3/3+] c1-s0 finished"
    other = SimpleNamespace(trial_id="t2", custom_dirname="c1-s1", local_path="/y", last_result=None)
    progress.on_trial_result(0, [], other, _level("c1-s1", 0))
    progress.on_trial_error(0, [], other)
    assert lines[-1].startswith("[1/2 done, 0 running, 1 failed;") and "FAILED: see /y" in lines[-1]
