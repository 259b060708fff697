"""One lineage as it is run: its data, model, masks and checkpoints, and the steps of a level.

A `LineageRun` is driven level by level, in order, by `run_lineage` (which trains the model
alone) and by `run_bundle` (which trains it as one slice of a stacked model). A level is either
read back (`read_back`, when complete on disk) or trained: `resume_or_start` gives its masks and
training state (from the progress checkpoint, else from the level's start, with the model set to
match), the driver trains epochs of `batches` (calling `after_step` after every optimizer step
and `save_progress` after every epoch), and `finish_level` evaluates and commits it.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainables.checkpoints import LevelProgress, LevelRecord, LineageCheckpoints
from trainables.data import epoch_batches, load_dataset
from trainables.ids import checkpoint_id, digest, lineage_id
from trainables.loop import evaluate, lr_at, resolve_precision, wants_channels_last
from trainables.masks import LayerSparsity, Masks, apply_masks, dense_masks, prunable_names, sparsity_report
from trainables.models import build_model
from trainables.schedules import LevelPlan, level_masks
from trainables.specs import LineageSpec
from trainables.stacked import own_state
from trainables.storage import Store

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class LevelResult:
    lineage_id: str
    level: int
    checkpoint_id: str
    checkpoint_dir: str  # the level folder: a local path or an object-store URI
    metrics: dict[str, float]  # sparsity, sparsity_all, test_acc, test_loss, train_loss, epochs, wall_s
    layers: tuple[LayerSparsity, ...]
    resumed: bool  # read back from disk rather than trained by this call
    precision: str | None = None  # "fp32" or "bf16" forward passes; None for levels written before it was recorded


def resolve_device(device: str | torch.device) -> torch.device:
    """`"auto"`: CUDA when available, else the CPU; anything else as torch reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def warn_set_aside(checkpoints: LineageCheckpoints) -> None:
    """Set aside the lineage's damaged checkpoints (they are computed again) and say which."""
    for moved in checkpoints.set_aside_damaged():
        warnings.warn(f"lineage {checkpoints.lineage_id}: damaged checkpoint set aside and computed again: {moved}",
                      stacklevel=3)


def seed_of(*parts: Any) -> int:
    """A 63-bit seed derived from the lineage seed and a purpose, stable across processes."""
    return int(digest("/".join(map(str, parts))), 16) & (2**63 - 1)


def connected_fractions(masks: Masks) -> dict[str, float]:
    """Per weight (of 2 or more dims): the fraction of output units (rows, conv filters) that
    keep at least one incoming weight."""
    return {name: float(m.flatten(1).any(1).float().mean()) for name, m in masks.items() if m.ndim >= 2}


def final_level(workdir: str | os.PathLike | Store, spec: LineageSpec) -> int:
    """The last level of a lineage: its planned last, or where its stopping rule ended it."""
    stopped = LineageCheckpoints(workdir, lineage_id(spec)).stopped_level()
    return spec.prune.n_levels if stopped is None else stopped


class LineageRun:
    """The state shared by the levels of one lineage in one call of `run_lineage` or
    `run_bundle` (`fused=True`: the model trains as a slice of a stack; its checkpoints say
    `"fused": True`, and it is never compiled)."""

    def __init__(self, spec: LineageSpec, *, workdir: str | os.PathLike | Store, device: torch.device,
                 fused: bool = False):
        self.spec, self.device, self.fused = spec, device, fused
        self.precision = resolve_precision(spec.precision, device)
        self.lineage_id = lineage_id(spec)
        self.checkpoints = LineageCheckpoints(workdir, self.lineage_id)
        self.checkpoints.ensure_spec(spec)
        self.splits = load_dataset(spec.dataset, options=spec.dataset_options, data_root=spec.data_root,
                                   download=spec.download)
        self.resident = _fits_on_device(self.splits, device, spec.max_device_data_gb)
        # Resident data lives on the device as one tensor (batches are index slices there);
        # otherwise it stays in pinned host memory and each batch is copied over (streaming).
        place = (lambda t: t.to(device)) if self.resident else (lambda t: t.pin_memory() if device.type == "cuda" else t)
        self.x_train, self.y_train = place(self.splits.x_train), place(self.splits.y_train)
        self.x_test, self.y_test = place(self.splits.x_test), place(self.splits.y_test)
        self.steps_per_epoch = -(-len(self.x_train) // spec.train.batch_size)
        self.model = self._fresh_model(seed_of(spec.seed, "init"))
        self.channels_last = wants_channels_last(self.model, self.x_train)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            if self.resident:
                self.x_train = self.x_train.contiguous(memory_format=torch.channels_last)
        # The compiled module shares parameters with self.model, which keeps the plain names
        # that masks and checkpoints use. A fused lineage trains through its bundle's stack and
        # only evaluates here, uncompiled.
        self.forward = torch.compile(self.model) if spec.compile and not fused else self.model
        self.names = prunable_names(self.model, spec.prune)
        self.done = set(self.checkpoints.complete_levels())
        self._ensure_rewind_point()

    def share_data(self, other: LineageRun) -> None:
        """Use `other`'s copy of the data (a bundle's lineages share one configuration)."""
        self.x_train, self.y_train, self.x_test, self.y_test = other.x_train, other.y_train, other.x_test, other.y_test

    # -- level steps ----------------------------------------------------------------------------
    def read_back(self, level: int) -> LevelResult:
        """The result of a level complete on disk."""
        record = self.checkpoints.read_record(level)
        return LevelResult(self.lineage_id, level, checkpoint_id(self.lineage_id, level),
                           self.checkpoints.level_dir(level), record.metrics, record.layers, resumed=True,
                           precision=record.precision)

    def resume_or_start(self, plan: LevelPlan) -> LevelProgress:
        """Where the unfinished level `plan.level` stands, with the model set to match: its
        progress checkpoint, else its start (masks computed, weights rewound)."""
        saved = self.checkpoints.load_progress(plan.level, self.device)
        if saved is None:
            return LevelProgress(plan.level, self._start_level(plan))
        progress, model_state = saved
        self.model.load_state_dict(model_state)
        return progress

    def batches(self, plan: LevelPlan, epoch: int, *, channels_last: bool | None = None) -> Batches:
        """The batches of `epoch` of the level, on the device (`channels_last`: the layout of
        streamed batches, default the model's)."""
        batches = epoch_batches(self.x_train, self.y_train, batch_size=self.spec.train.batch_size,
                                epoch_seed=seed_of(self.spec.seed, "data", plan.level, epoch),
                                augment=self.splits.info.augment)
        if self.resident:
            return batches
        return _to_device(batches, self.device, self.channels_last if channels_last is None else channels_last)

    def peak_lr(self, plan: LevelPlan) -> float:
        return plan.lr if plan.lr is not None else self.spec.train.lr

    def lr_of_step(self, plan: LevelPlan, step: int) -> float:
        """The learning rate of `step` (counted within the level): a pure function of the step."""
        peak = self.peak_lr(plan)
        if plan.constant_lr:
            return peak
        return lr_at(step, train=self.spec.train, steps_per_epoch=self.steps_per_epoch, peak_lr=peak)

    def after_step(self, plan: LevelPlan, progress: LevelProgress, *, step: int) -> None:
        """After optimizer step `step` of the level: the step rewind point of level 0, and the
        gradual ramp's mask updates (which change `progress.masks` in place)."""
        if plan.level == 0 and self.spec.prune.rewind == "step" and step == self.spec.prune.rewind_step:
            self.checkpoints.save_rewind_point(self._model_state(), step=step)
        if plan.gradual is not None:
            plan.gradual.update(step, model=self.model, masks=progress.masks)

    def save_progress(self, plan: LevelPlan, progress: LevelProgress) -> bool:
        """Write the in-level resume point after `progress.epoch` epochs if the checkpoint period
        says so (never after the last epoch: the level checkpoint follows). Returns whether it
        was written."""
        if progress.epoch >= plan.epochs or progress.epoch % self.spec.checkpoint_every_epochs:
            return False
        self.checkpoints.save_progress(progress, model_state=self._model_state(), fused=self.fused,
                                       precision=self.precision)
        return True

    def finish_level(self, plan: LevelPlan, progress: LevelProgress) -> LevelResult:
        """Evaluate the trained level and commit its checkpoint."""
        test_loss, test_acc = evaluate(self.forward, self.x_test, y=self.y_test, device=self.device,
                                       precision=self.precision)
        report = sparsity_report(self.model, progress.masks)
        metrics = {
            "sparsity": report.sparsity, "sparsity_all": report.sparsity_all, "test_acc": test_acc,
            "test_loss": test_loss, "train_loss": progress.train_losses[-1] if progress.train_losses else float("nan"),
            "epochs": float(plan.epochs), "wall_s": progress.wall_s,
        }
        path = self.checkpoints.save_level(progress, model_state=self._model_state(), fused=self.fused,
                                           record=LevelRecord(metrics, report.layers, self.precision))
        self.done.add(plan.level)
        return LevelResult(self.lineage_id, plan.level, checkpoint_id(self.lineage_id, plan.level), path, metrics,
                           report.layers, resumed=False, precision=self.precision)

    def should_stop(self, result: LevelResult) -> bool:
        """Pellegrini & Biroli's rule: no further level once some layer keeps at most a fraction
        of its units connected. Recorded, so that planners know the lineage is complete at this
        level."""
        threshold = self.spec.prune.stop_connected_fraction
        if threshold is None:
            return False
        fraction = min(connected_fractions(self.checkpoints.load_level(result.level, self.device).masks).values())
        if fraction > threshold:
            return False
        self.checkpoints.record_stop(result.level, connected_fraction=fraction)
        return True

    # -- internals --------------------------------------------------------------------------------
    def _fresh_model(self, init_seed: int) -> nn.Module:
        # Builders use PyTorch's default initialisers, which draw from the global RNG: fork it
        # so that the caller's RNG is untouched and the init depends on init_seed alone.
        info = self.splits.info
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = build_model(self.spec.model, input_shape=info.input_shape, num_classes=info.num_classes,
                                options=self.spec.model_options)
        return model.to(self.device)

    def _ensure_rewind_point(self) -> None:
        if self.spec.prune.rewind == "step":
            total = self.spec.train.epochs * self.steps_per_epoch
            if self.spec.prune.rewind_step > total:
                raise ValueError(
                    f"prune.rewind_step={self.spec.prune.rewind_step} exceeds the {total} steps of level 0"
                )
        elif not self.checkpoints.has_rewind_point():
            # The initial weights: the original lottery ticket's rewind point (and the dense start).
            self.checkpoints.save_rewind_point(self.model.state_dict(), step=0)

    def _model_state(self) -> dict[str, torch.Tensor]:
        # A fused model's tensors are views of its stack: saving them as they are would save the
        # whole stack.
        return own_state(self.model) if self.fused else self.model.state_dict()

    def _start_level(self, plan: LevelPlan) -> Masks:
        """Masks of this level, with the model set to the weights training starts from."""
        if plan.level == 0:
            return dense_masks(self.model, self.names)
        source = self.checkpoints.load_level(plan.source_level, self.device)
        self.model.load_state_dict(source.model)
        masks = level_masks(self.spec, plan, model=self.model, source_masks=source.masks,
                            generator_seed=seed_of(self.spec.seed, "random_prune", plan.level))
        if self.spec.prune.control == "random_reinit":
            fresh = self._fresh_model(seed_of(self.spec.seed, "reinit", plan.level))
            self.model.load_state_dict(fresh.state_dict())
        elif self.spec.prune.rewind in ("init", "step"):
            self.model.load_state_dict(self.checkpoints.load_rewind_point(self.device))
        # rewind lr / finetune: keep the source level's trained weights.
        apply_masks(self.model, masks)
        return masks


def _fits_on_device(splits, device: torch.device, max_gb: float) -> bool:
    """Keep the whole dataset on the device when it fits within the budget (always on CPU)."""
    if device.type == "cpu":
        return True
    tensors = (splits.x_train, splits.y_train, splits.x_test, splits.y_test)
    return sum(t.numel() * t.element_size() for t in tensors) <= max_gb * 2**30


def _to_device(batches: Batches, device: torch.device, channels_last: bool) -> Batches:
    """The streaming path: batches drawn in host memory, copied to the device one at a time."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for x, y in batches:
        yield x.to(device, non_blocking=True, memory_format=fmt), y.to(device, non_blocking=True)
