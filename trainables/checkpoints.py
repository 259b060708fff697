"""A lineage's checkpoints and records (spec, rewind point, in-level progress, complete levels,
stopping record) and what they record of how it was trained, which decides how it may resume.

Keys come from `trainables.layout`, reads and writes go through the workdir's store (whole or
nothing; tensors load with `weights_only=True`). A level is one committed group of files:
`state.pt` (model, masks, optimizer, progress, training mode, RNG state), `metrics.json`
(metrics, per-layer sparsity, training mode, the sha256 of `state.pt`) and a copy of `spec.json`.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from trainables import layout
from trainables.ids import canonical, identity
from trainables.layout import LEVEL_METRICS_FILE, LEVEL_STATE_FILE, SPEC_FILE
from trainables.masks import LayerSparsity, Masks
from trainables.specs import LineageSpec
from trainables.storage import Store, as_store, join, json_bytes, open_store, torch_bytes


@dataclass(frozen=True)
class LevelCheckpoint:
    """A complete level as stored on disk."""

    path: str  # the level folder: a local path or an object-store URI
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
    """Load a level folder (`<workdir>/lineages/<lineage_id>/LNN`, a local path or a URI) written
    by `run_lineage`."""
    return load_level_from(open_store(path), "", map_location=map_location)


def load_level_from(store: Store, folder: str, *, map_location: str | torch.device = "cpu") -> LevelCheckpoint:
    """Load the level folder `folder` (a key) of `store` (no second store, nor client, opened)."""
    state_key, spec_key = join(folder, LEVEL_STATE_FILE), join(folder, SPEC_FILE)
    if not store.exists(state_key):
        raise FileNotFoundError(f"no checkpoint at {store.uri(folder)}: {LEVEL_STATE_FILE} is missing")
    state = store.load_torch(state_key, map_location)
    return LevelCheckpoint(
        path=store.uri(folder),
        level=int(state["progress"]["level"]),
        model=state["model"],
        masks=state["masks"],
        metrics=store.read_json(join(folder, LEVEL_METRICS_FILE)),
        fused=bool(state.get("fused", False)),
        precision=state.get("precision"),
        spec=store.read_json(spec_key)["spec"] if store.exists(spec_key) else None,
    )


class LineageCheckpoints:
    """The stored state of one lineage under `workdir` (a path, a URI, or its open Store).
    Writers are called by the lineage's one trainer, which holds `lock()`."""

    def __init__(self, workdir: str | os.PathLike | Store, lineage_id: str):
        self.store, self.lineage_id = as_store(workdir), lineage_id
        self.root = layout.lineage_dir(lineage_id)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """A `with` block in which this process is the lineage's only trainer (others wait)."""
        return self.store.lock(layout.lineage_lock(self.lineage_id))

    def remove_temporaries(self) -> int:
        """Delete what writes killed mid-way left; call it under `lock()`."""
        return self.store.remove_temporaries(self.root)

    # -- the spec ------------------------------------------------------------------------------
    def ensure_spec(self, spec: LineageSpec) -> None:
        """Store `spec` on first use; refuse a lineage folder whose stored identity differs (a
        hash collision or a bug)."""
        old = self.stored_spec()
        if old is None:
            self.store.write_json(layout.lineage_spec(self.lineage_id), {
                "identity": identity(spec), "canonical": canonical(spec), "spec": spec.model_dump(mode="json")})
        elif old.get("identity") != identity(spec):
            raise ValueError(f"lineage {self.lineage_id}: stored spec.json has identity {old.get('identity')}, "
                             f"this spec has {identity(spec)}")

    def stored_spec(self) -> dict[str, Any] | None:
        """The stored spec.json (`identity`, `canonical`, `spec`), None before the lineage started."""
        key = layout.lineage_spec(self.lineage_id)
        return self.store.read_json(key) if self.store.exists(key) else None

    # -- the rewind point ------------------------------------------------------------------------
    def has_rewind_point(self) -> bool:
        return self.store.exists(layout.rewind_point(self.lineage_id))

    def save_rewind_point(self, model_state: dict[str, torch.Tensor], *, step: int) -> None:
        self.store.save_torch(layout.rewind_point(self.lineage_id), {"model": model_state, "step": step})

    def load_rewind_point(self, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The model state dict of the rewind point."""
        key = layout.rewind_point(self.lineage_id)
        if not self.store.exists(key):  # set aside as damaged; a rewind to init rebuilds it, not one to a step
            raise FileNotFoundError(f"lineage {self.lineage_id}: the rewind point {self.store.uri(key)} is missing; "
                                    "with prune.rewind: step it comes from level 0, so remove L00 to train it again")
        return self.store.load_torch(key, map_location)["model"]

    # -- the progress checkpoint -----------------------------------------------------------------
    def save_progress(self, progress: LevelProgress, *, model_state: dict[str, torch.Tensor], fused: bool,
                      precision: str) -> None:
        """Write the in-level resume point (replacing the previous one)."""
        self.store.save_torch(layout.progress(self.lineage_id), {
            "level": progress.level, "epoch": progress.epoch, "step": progress.step,
            "train_losses": progress.train_losses, "wall_s": progress.wall_s, "model": model_state,
            "masks": progress.masks, "optimizer": progress.optimizer, "fused": fused, "precision": precision,
        })

    def load_progress(self, level: int, map_location: str | torch.device = "cpu"
                      ) -> tuple[LevelProgress, dict[str, torch.Tensor]] | None:
        """(progress, model state dict) of the resume point of `level`; None if there is none."""
        key = layout.progress(self.lineage_id)
        if not self.store.exists(key):
            return None
        saved = self.store.load_torch(key, map_location)
        if saved["level"] != level:
            return None
        progress = LevelProgress(level, saved["masks"], saved["epoch"], saved["step"], list(saved["train_losses"]),
                                 float(saved["wall_s"]), saved["optimizer"])
        return progress, saved["model"]

    # -- complete levels -------------------------------------------------------------------------
    def complete_levels(self) -> list[int]:
        """Levels whose group of files is committed (and so complete), ascending."""
        levels = [layout.level_of(name) for name in self.store.list_children(self.root)]
        return sorted(level for level in levels if level is not None and self.is_complete(level))

    def level_dir(self, level: int) -> str:
        """The level folder's full location (a local path or a URI)."""
        return self.store.uri(layout.level_dir(self.lineage_id, level))

    def is_complete(self, level: int) -> bool:
        return self.store.is_committed(layout.level_dir(self.lineage_id, level))

    def verified_levels(self) -> list[int]:
        """Complete levels whose checkpoint can be trusted: `state.pt` has the sha256 recorded
        beside it in `metrics.json` (a level written before digests were recorded: it loads)."""
        return [level for level in self.complete_levels() if self._verified(level)]

    def set_aside_damaged(self) -> list[str]:
        """Move aside (`<name>.corrupt`) every checkpoint of the lineage that cannot be trusted,
        so that it is computed again instead of loaded: a level failing `verified_levels`, a
        progress checkpoint or rewind point that does not load. Call it under `lock()`. Returns
        what was set aside."""
        damaged = [layout.level_dir(self.lineage_id, level) for level in self.complete_levels()
                   if not self._verified(level)]
        for key in (layout.progress(self.lineage_id), layout.rewind_point(self.lineage_id)):
            if self.store.exists(key) and not self._loads(key):
                damaged.append(key)
        return [f"{self.store.uri(key)} -> {self.store.set_aside(key).rsplit('/', 1)[-1]}" for key in damaged]

    def _verified(self, level: int) -> bool:
        if self.store.keeps_integrity:  # a committed group reads back as written: nothing to hash
            return True
        folder = layout.level_dir(self.lineage_id, level)
        try:
            recorded = self.store.read_json(f"{folder}/{LEVEL_METRICS_FILE}").get("state_sha256")
        except (OSError, ValueError):
            return False
        if recorded is None:
            return self._loads(f"{folder}/{LEVEL_STATE_FILE}")
        try:
            return self.store.sha256(f"{folder}/{LEVEL_STATE_FILE}") == recorded
        except OSError:
            return False

    def _loads(self, key: str) -> bool:
        """Whether a checkpoint file loads (and matches the digest stored with it): a failure of
        any kind means it cannot be trusted."""
        try:
            self.store.load_torch(key)
        except Exception:
            return False
        return True

    def load_level(self, level: int, map_location: str | torch.device = "cpu") -> LevelCheckpoint:
        return load_level_from(self.store, layout.level_dir(self.lineage_id, level), map_location=map_location)

    def read_record(self, level: int) -> LevelRecord:
        stored = self.store.read_json(f"{layout.level_dir(self.lineage_id, level)}/{LEVEL_METRICS_FILE}")
        layers = tuple(LayerSparsity(d["layer"], d["n_params"], d["n_zero"]) for d in stored["layers"])
        return LevelRecord(stored["metrics"], layers, stored.get("precision"))

    def save_level(self, progress: LevelProgress, *, model_state: dict[str, torch.Tensor], fused: bool,
                   record: LevelRecord) -> str:
        """Commit a trained level (`progress` at its end) as one group of files; returns its folder."""
        state = torch_bytes({
            "model": model_state, "masks": progress.masks, "optimizer": progress.optimizer,
            "progress": {"level": progress.level, "epoch": progress.epoch, "step": progress.step},
            "fused": fused, "precision": record.precision, "rng": torch.get_rng_state(),
        })
        layers = [{"layer": l.layer, "n_params": l.n_params, "n_zero": l.n_zero} for l in record.layers]
        metrics = {"metrics": record.metrics, "layers": layers, "precision": record.precision, "fused": fused,
                   "state_sha256": hashlib.sha256(state).hexdigest()}
        self.store.commit_group(layout.level_dir(self.lineage_id, progress.level), {
            LEVEL_STATE_FILE: state, LEVEL_METRICS_FILE: json_bytes(metrics),
            SPEC_FILE: json_bytes(self.stored_spec()),
        })
        return self.level_dir(progress.level)

    # -- the stopping record ---------------------------------------------------------------------
    def stopped_level(self) -> int | None:
        """The level where the lineage's stopping rule ended it (None: not stopped by its rule)."""
        key = layout.stopped(self.lineage_id)
        return int(self.store.read_json(key)["level"]) if self.store.exists(key) else None

    def record_stop(self, level: int, *, connected_fraction: float) -> None:
        """Record (once) that the stopping rule ended the lineage at `level`."""
        key = layout.stopped(self.lineage_id)
        if not self.store.exists(key):
            self.store.write_json(key, {"level": level, "connected_fraction": connected_fraction})

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

    def _recorded(self) -> dict[str, dict[str, Any]]:
        """What each checkpoint (levels and the progress checkpoint) records of how it was
        trained: `fused` (a progress checkpoint without the key was written unfused, before
        progress checkpoints recorded it) and `precision` ("fp32"/"bf16"; None where a
        checkpoint predates the record)."""
        out = {}
        for key in self._records():
            state = self.store.read_json(key) if key.endswith(".json") else self.store.load_torch(key)
            out[self.store.uri(key)] = {"fused": bool(state.get("fused", False)), "precision": state.get("precision")}
        return out

    def _records(self) -> Iterator[str]:
        """Where each checkpoint records how it was trained: a level's small `metrics.json`
        (its `state.pt` for levels written before metrics.json said `fused`), the progress
        checkpoint itself."""
        for level in self.complete_levels():
            folder = layout.level_dir(self.lineage_id, level)
            metrics = f"{folder}/{LEVEL_METRICS_FILE}"
            yield metrics if "fused" in self.store.read_json(metrics) else f"{folder}/{LEVEL_STATE_FILE}"
        if self.store.exists(layout.progress(self.lineage_id)):
            yield layout.progress(self.lineage_id)

    def _agreed(self, recorded: dict[str, dict[str, Any]], key: str) -> Any:
        """The one value of `key` the checkpoints record (None: no checkpoint or no record)."""
        values = {path: rec[key] for path, rec in recorded.items() if rec[key] is not None}
        if len(set(values.values())) > 1:
            raise ValueError(f"lineage {self.lineage_id} has checkpoints of different {key}: "
                             + ", ".join(f"{path} {key}: {value}" for path, value in values.items()))
        return next(iter(values.values()), None)
