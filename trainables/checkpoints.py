"""Checkpoints on disk: one directory per level, written under a temporary name and renamed.

Layout under `<workdir>/lineages/<lineage_id>/`:
    spec.json          the full spec (identity and runtime) that created the lineage
    rewind.pt          the rewind point (weights at init or at step k of level 0)
    progress.pt        the newest in-level resume point (level, epoch, step, optimizer state)
    L00/ L01/ ...      complete levels: state.pt (model, masks, optimizer, progress), metrics.json
Everything loads with `torch.load(..., weights_only=True)`.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

LEVEL_STATE = "state.pt"
LEVEL_METRICS = "metrics.json"


def lineage_dir(workdir: str | os.PathLike, lineage_id: str) -> Path:
    return Path(workdir) / "lineages" / lineage_id


def level_dir(workdir: str | os.PathLike, lineage_id: str, level: int) -> Path:
    return lineage_dir(workdir, lineage_id) / f"L{level:02d}"


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An advisory lock held for the `with` block (released by the OS if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


TEMPORARY_GLOB = ".*.tmp"  # what the atomic writers here name their temporaries


def remove_temporaries(root: Path) -> int:
    """Delete the hidden temporaries (`.<name>.<random>.tmp`, files or folders) that atomic
    writes killed mid-way left anywhere under `root`; returns how many. Call it only while no
    writer can be active there (under the folder's `exclusive_lock`)."""
    removed = 0
    if not root.is_dir():
        return removed
    for path in sorted(root.rglob(TEMPORARY_GLOB), key=lambda p: len(p.parts)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
        else:
            continue  # inside a folder removed above
        removed += 1
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_torch(path: Path, obj: Any) -> None:
    """torch.save to a temporary file in the same folder, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)


def write_dir_atomically(final: Path, fill: Callable[[Path], None]) -> None:
    """Create `final` by filling a hidden sibling directory and renaming it into place.

    A reader sees either no directory or a complete one; a crash leaves only a hidden temporary.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        fill(tmp)
        if final.exists():  # an identical level written by an earlier attempt: keep the first
            shutil.rmtree(tmp)
            return
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(frozen=True)
class LevelCheckpoint:
    """A complete level as stored on disk."""

    path: Path
    level: int
    model: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    fused: bool
    precision: str | None = None  # "fp32" or "bf16" forward passes; None if written before it was recorded


def complete_levels(workdir: str | os.PathLike, lineage_id: str) -> list[int]:
    """Levels whose directory was renamed into place (and so is complete), ascending."""
    root = lineage_dir(workdir, lineage_id)
    if not root.is_dir():
        return []
    levels = []
    for child in root.iterdir():
        name = child.name
        if child.is_dir() and name.startswith("L") and name[1:].isdigit() and (child / LEVEL_STATE).exists():
            levels.append(int(name[1:]))
    return sorted(levels)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LevelCheckpoint:
    """Load a level directory (`.../lineages/<lineage_id>/LNN`) written by `run_lineage`."""
    path = Path(path)
    state_file = path / LEVEL_STATE
    if not state_file.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: {LEVEL_STATE} is missing")
    state = load_torch(state_file, map_location)
    metrics = json.loads((path / LEVEL_METRICS).read_text())
    return LevelCheckpoint(
        path=path,
        level=int(state["progress"]["level"]),
        model=state["model"],
        masks=state["masks"],
        metrics=metrics,
        fused=bool(state.get("fused", False)),
        precision=state.get("precision"),
    )
