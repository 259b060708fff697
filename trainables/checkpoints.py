"""A lineage's checkpoints and records: its spec, the rewind point, the in-level progress
checkpoint, complete levels, the stopping record, and what they record of how the lineage was
trained (fused or not, in which precision), which decides the mode it may resume in.

Paths come from `trainables.layout` (`<workdir>/lineages/<lineage_id>/`), every write and read
goes through `trainables.storage` (atomic; tensors load with `weights_only=True`). A level
folder holds `state.pt` (model, masks, optimizer, progress, training mode, RNG state),
`metrics.json` (metrics, per-layer sparsity, precision) and a copy of `spec.json`.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainables import storage
from trainables.ids import canonical, identity
from trainables.layout import LEVEL_METRICS_FILE, LEVEL_STATE_FILE, SPEC_FILE, Layout
from trainables.masks import LayerSparsity, Masks
from trainables.specs import LineageSpec


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
    spec: dict[str, Any] | None = None  # the lineage's full spec (identity and runtime fields), as JSON


@dataclass(frozen=True)
class LevelRecord:
    """What a complete level's `metrics.json` holds."""

    metrics: dict[str, float]  # sparsity, sparsity_all, test_acc, test_loss, train_loss, epochs, wall_s
    layers: tuple[LayerSparsity, ...]
    precision: str | None  # None for levels written before it was recorded


@dataclass
class LevelProgress:
    """Where the training of one level stands: its masks, the epochs and optimizer steps done,
    the mean training loss of each epoch, the wall-clock seconds spent, and the optimizer's state
    dict (None before the first epoch)."""

    level: int
    masks: Masks
    epoch: int = 0
    step: int = 0
    train_losses: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    optimizer: dict | None = None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LevelCheckpoint:
    """Load a level folder (`.../lineages/<lineage_id>/LNN`) written by `run_lineage`."""
    path = Path(path)
    state_file = path / LEVEL_STATE_FILE
    if not state_file.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: {LEVEL_STATE_FILE} is missing")
    state = storage.load_torch(state_file, map_location)
    spec_file = path / SPEC_FILE
    return LevelCheckpoint(
        path=path,
        level=int(state["progress"]["level"]),
        model=state["model"],
        masks=state["masks"],
        metrics=storage.read_json(path / LEVEL_METRICS_FILE),
        fused=bool(state.get("fused", False)),
        precision=state.get("precision"),
        spec=storage.read_json(spec_file)["spec"] if spec_file.exists() else None,
    )


class LineageCheckpoints:
    """The stored state of one lineage under `workdir`. Writers are called by the lineage's one
    trainer, which holds `lock()`."""

    def __init__(self, workdir: str | os.PathLike, lineage_id: str):
        self.layout, self.lineage_id = Layout(workdir), lineage_id
        self.root = self.layout.lineage_dir(lineage_id)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """A `with` block in which this process is the lineage's only trainer (others wait)."""
        return storage.exclusive_lock(self.layout.lineage_lock(self.lineage_id))

    def remove_temporaries(self) -> int:
        """Delete what writes killed mid-way left; call it under `lock()`."""
        return storage.remove_temporaries(self.root)

    # -- the spec ------------------------------------------------------------------------------
    def ensure_spec(self, spec: LineageSpec) -> None:
        """Store `spec` on first use; refuse a lineage folder whose stored identity differs (a
        hash collision or a bug)."""
        path = self.layout.lineage_spec(self.lineage_id)
        if path.exists():
            old = storage.read_json(path)
            if old.get("identity") != identity(spec):
                raise ValueError(f"lineage {self.lineage_id}: stored spec.json has identity {old.get('identity')}, "
                                 f"this spec has {identity(spec)}")
        else:
            storage.write_json(path, {"identity": identity(spec), "canonical": canonical(spec),
                                      "spec": spec.model_dump(mode="json")})

    def stored_spec(self) -> dict[str, Any] | None:
        """The stored spec.json (`identity`, `canonical`, `spec`), None before the lineage started."""
        path = self.layout.lineage_spec(self.lineage_id)
        return storage.read_json(path) if path.exists() else None

    # -- the rewind point ------------------------------------------------------------------------
    def has_rewind_point(self) -> bool:
        return self.layout.rewind_point(self.lineage_id).exists()

    def save_rewind_point(self, model_state: dict[str, torch.Tensor], *, step: int) -> None:
        storage.save_torch(self.layout.rewind_point(self.lineage_id), {"model": model_state, "step": step})

    def load_rewind_point(self, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The model state dict of the rewind point."""
        path = self.layout.rewind_point(self.lineage_id)
        if not path.exists():  # set aside as damaged; a rewind to init rebuilds it, not a rewind to a step
            raise FileNotFoundError(f"lineage {self.lineage_id}: the rewind point {path} is missing; with "
                                    "prune.rewind: step it comes from level 0, so remove L00 to train it again")
        return storage.load_torch(path, map_location)["model"]

    # -- the progress checkpoint -----------------------------------------------------------------
    def save_progress(self, progress: LevelProgress, *, model_state: dict[str, torch.Tensor], fused: bool,
                      precision: str) -> None:
        """Write the in-level resume point (replacing the previous one)."""
        storage.save_torch(self.layout.progress(self.lineage_id), {
            "level": progress.level, "epoch": progress.epoch, "step": progress.step,
            "train_losses": progress.train_losses, "wall_s": progress.wall_s, "model": model_state,
            "masks": progress.masks, "optimizer": progress.optimizer, "fused": fused, "precision": precision,
        })

    def load_progress(self, level: int, map_location: str | torch.device = "cpu"
                      ) -> tuple[LevelProgress, dict[str, torch.Tensor]] | None:
        """(progress, model state dict) of the resume point of `level`; None if there is none."""
        path = self.layout.progress(self.lineage_id)
        if not path.exists():
            return None
        saved = storage.load_torch(path, map_location)
        if saved["level"] != level:
            return None
        progress = LevelProgress(level, saved["masks"], saved["epoch"], saved["step"], list(saved["train_losses"]),
                                 float(saved["wall_s"]), saved["optimizer"])
        return progress, saved["model"]

    # -- complete levels -------------------------------------------------------------------------
    def complete_levels(self) -> list[int]:
        """Levels whose folder was renamed into place (and so is complete), ascending."""
        if not self.root.is_dir():
            return []
        levels = []
        for child in self.root.iterdir():
            level = Layout.level_of(child.name)
            if level is not None and child.is_dir() and self.is_complete(level):
                levels.append(level)
        return sorted(levels)

    def level_dir(self, level: int) -> Path:
        return self.layout.level_dir(self.lineage_id, level)

    def is_complete(self, level: int) -> bool:
        return (self.level_dir(level) / LEVEL_STATE_FILE).exists()

    def verified_levels(self) -> list[int]:
        """Complete levels whose checkpoint can be trusted: `state.pt` has the sha256 recorded
        beside it in `metrics.json` (a level written before digests were recorded: it loads)."""
        return [level for level in self.complete_levels() if self._verified(level)]

    def set_aside_damaged(self) -> list[str]:
        """Rename (`<name>.corrupt`) every checkpoint of the lineage that cannot be trusted, so that
        it is computed again instead of loaded: a level failing `verified_levels`, a progress
        checkpoint or rewind point that does not load. Call it under `lock()`. Returns what was
        set aside."""
        damaged = [self.level_dir(level) for level in self.complete_levels() if not self._verified(level)]
        for path in (self.layout.progress(self.lineage_id), self.layout.rewind_point(self.lineage_id)):
            if path.exists() and not _loads(path):
                damaged.append(path)
        return [f"{path} -> {storage.set_aside(path).name}" for path in damaged]

    def _verified(self, level: int) -> bool:
        folder = self.level_dir(level)
        try:
            recorded = storage.read_json(folder / LEVEL_METRICS_FILE).get("state_sha256")
        except (OSError, ValueError):
            return False
        if recorded is None:
            return _loads(folder / LEVEL_STATE_FILE)
        return storage.sha256_file(folder / LEVEL_STATE_FILE) == recorded

    def load_level(self, level: int, map_location: str | torch.device = "cpu") -> LevelCheckpoint:
        return load_checkpoint(self.level_dir(level), map_location)

    def read_record(self, level: int) -> LevelRecord:
        stored = storage.read_json(self.level_dir(level) / LEVEL_METRICS_FILE)
        layers = tuple(LayerSparsity(d["layer"], d["n_params"], d["n_zero"]) for d in stored["layers"])
        return LevelRecord(stored["metrics"], layers, stored.get("precision"))

    def save_level(self, progress: LevelProgress, *, model_state: dict[str, torch.Tensor], fused: bool,
                   record: LevelRecord) -> Path:
        """Commit a trained level (`progress` at its end) as one folder; returns its path."""
        path = self.level_dir(progress.level)
        spec = self.stored_spec()

        def fill(folder: Path) -> None:
            buffer = io.BytesIO()
            torch.save({
                "model": model_state, "masks": progress.masks, "optimizer": progress.optimizer,
                "progress": {"level": progress.level, "epoch": progress.epoch, "step": progress.step},
                "fused": fused, "precision": record.precision, "rng": torch.get_rng_state(),
            }, buffer)
            (folder / LEVEL_STATE_FILE).write_bytes(buffer.getvalue())
            layers = [{"layer": l.layer, "n_params": l.n_params, "n_zero": l.n_zero} for l in record.layers]
            storage.write_json(folder / LEVEL_METRICS_FILE, {
                "metrics": record.metrics, "layers": layers, "precision": record.precision,
                "state_sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
            })
            storage.write_json(folder / SPEC_FILE, spec)

        storage.commit_dir(path, fill)
        return path

    # -- the stopping record ---------------------------------------------------------------------
    def stopped_level(self) -> int | None:
        """The level where the lineage's stopping rule ended it (None: not stopped by its rule)."""
        path = self.layout.stopped(self.lineage_id)
        return int(storage.read_json(path)["level"]) if path.exists() else None

    def record_stop(self, level: int, *, connected_fraction: float) -> None:
        """Record (once) that the stopping rule ended the lineage at `level`."""
        path = self.layout.stopped(self.lineage_id)
        if not path.exists():
            storage.write_json(path, {"level": level, "connected_fraction": connected_fraction})

    # -- the training mode -----------------------------------------------------------------------
    def trained_mode(self) -> bool | None:
        """Whether the lineage was trained fused (True), unfused (False), or not at all (None).
        Raises ValueError if its checkpoints disagree."""
        return self._agreed(self._recorded(), "fused")

    def check_mode(self, *, fused: bool, precision: str | None = None) -> None:
        """Raise ValueError if the lineage has checkpoints trained in the other mode, or (given
        the resolved `precision`) in another precision; a lineage with no checkpoint yet may
        start in either."""
        recorded = self._recorded()
        mode = self._agreed(recorded, "fused")
        if mode is not None and mode != fused:
            want, was = ("fused", "unfused") if fused else ("unfused", "fused")
            raise ValueError(f"lineage {self.lineage_id} was trained {was} and cannot be resumed {want}: "
                             f"a lineage resumes in the mode it started in")
        was = self._agreed(recorded, "precision")
        if precision is not None and was is not None and was != precision:
            raise ValueError(f"lineage {self.lineage_id} was trained with precision {was!r} and cannot be resumed "
                             f"with {precision!r}: a lineage resumes in the precision it started in "
                             f"(set precision: {was})")

    def _recorded(self) -> dict[Path, dict[str, Any]]:
        """What each checkpoint (levels and the progress checkpoint) records of how it was
        trained: `fused` (a progress checkpoint without the key was written unfused, before
        progress checkpoints recorded it) and `precision` ("fp32"/"bf16"; None where a
        checkpoint predates the record)."""
        out = {}
        for path in self._state_files():
            state = storage.load_torch(path)
            out[path] = {"fused": bool(state.get("fused", False)), "precision": state.get("precision")}
        return out

    def _state_files(self) -> Iterator[Path]:
        for level in self.complete_levels():
            yield self.level_dir(level) / LEVEL_STATE_FILE
        progress = self.layout.progress(self.lineage_id)
        if progress.exists():
            yield progress

    def _agreed(self, recorded: dict[Path, dict[str, Any]], key: str) -> Any:
        """The one value of `key` the checkpoints record (None: no checkpoint or no record)."""
        values = {path: rec[key] for path, rec in recorded.items() if rec[key] is not None}
        if len(set(values.values())) > 1:
            raise ValueError(f"lineage {self.lineage_id} has checkpoints of different {key}: "
                             + ", ".join(f"{path} {key}: {value}" for path, value in values.items()))
        return next(iter(values.values()), None)


def _loads(path: Path) -> bool:
    """Whether a checkpoint file loads (and matches the digest `storage.save_torch` wrote with it):
    a failure of any kind means it cannot be trusted."""
    try:
        storage.load_torch(path)
    except Exception:
        return False
    return True
