"""One IMP lineage end to end: level 0 is the dense network, then prune → rewind → retrain.

Resumable at epoch granularity: complete levels are read back from disk, and an interrupted
level continues from its newest progress checkpoint, so that (on CPU) a lineage that was stopped
and resumed ends bit-identical to one that never stopped.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables import checkpoints as ckpt
from trainables.data import epoch_batches, load_dataset
from trainables.ids import canonical, checkpoint_id, config_id, digest, identity, lineage_id
from trainables.loop import evaluate, lr_at, make_optimizer, resolve_precision, train_epoch, wants_channels_last
from trainables.masks import LayerSparsity, Masks, apply_masks, dense_masks, prunable_names, sparsity_report
from trainables.models import build_model
from trainables.schedules import LevelPlan, level_plans, level_masks
from trainables.specs import LineageSpec
from trainables.stacked import own_state


@dataclass(frozen=True)
class LevelResult:
    lineage_id: str
    level: int
    checkpoint_id: str
    checkpoint_dir: Path
    metrics: dict[str, float]  # sparsity, sparsity_all, test_acc, test_loss, train_loss, epochs, wall_s
    layers: tuple[LayerSparsity, ...]
    resumed: bool  # read back from disk rather than trained by this call
    precision: str | None = None  # "fp32" or "bf16" forward passes; None for levels written before it was recorded


@dataclass(frozen=True)
class LineageResult:
    lineage_id: str
    config_id: str
    spec: LineageSpec
    levels: tuple[LevelResult, ...]


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


STOPPED_FILE = "stopped.json"
PROGRESS_FILE = "progress.pt"


def connected_fractions(masks: Masks) -> dict[str, float]:
    """Per weight (of 2 or more dims): the fraction of output units (rows, conv filters) that
    keep at least one incoming weight."""
    return {name: float(m.flatten(1).any(1).float().mean()) for name, m in masks.items() if m.ndim >= 2}


def rule_stop_level(workdir: str | os.PathLike, lineage: str) -> int | None:
    """The level where the lineage's stopping rule ended it (None: not stopped by its rule)."""
    stopped = ckpt.lineage_dir(workdir, lineage) / STOPPED_FILE
    if stopped.exists():
        return int(json.loads(stopped.read_text())["level"])
    return None


def final_level(workdir: str | os.PathLike, spec: LineageSpec) -> int:
    """The last level of a lineage: its planned last, or where its stopping rule ended it."""
    stopped = rule_stop_level(workdir, lineage_id(spec))
    return spec.prune.n_levels if stopped is None else stopped


def _fits_on_device(splits, device: torch.device, max_gb: float) -> bool:
    """Keep the whole dataset on the device when it fits within the budget (always on CPU)."""
    if device.type == "cpu":
        return True
    tensors = (splits.x_train, splits.y_train, splits.x_test, splits.y_test)
    return sum(t.numel() * t.element_size() for t in tensors) <= max_gb * 2**30


def _to_device(batches, device: torch.device, channels_last: bool):
    """The streaming path: batches drawn in host memory, copied to the device one at a time."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for x, y in batches:
        yield x.to(device, non_blocking=True, memory_format=fmt), y.to(device, non_blocking=True)


def _seed_of(*parts: Any) -> int:
    """A 63-bit seed derived from the lineage seed and a purpose, stable across processes."""
    return int(digest("/".join(map(str, parts))), 16) & (2**63 - 1)


def _init_model(spec: LineageSpec, info, init_seed: int, device: torch.device) -> nn.Module:
    # Builders use PyTorch's default initialisers, which draw from the global RNG: fork it so
    # that the caller's RNG is untouched and the init depends on init_seed alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = build_model(
            spec.model, input_shape=info.input_shape, num_classes=info.num_classes, options=spec.model_options
        )
    return model.to(device)


def _check_spec(root: Path, spec: LineageSpec) -> None:
    """Refuse to reuse a lineage folder whose stored identity differs (a hash collision or a bug)."""
    stored = root / "spec.json"
    if stored.exists():
        old = json.loads(stored.read_text())
        if old.get("identity") != identity(spec):
            raise ValueError(
                f"lineage {root.name}: stored spec.json has identity {old.get('identity')}, "
                f"this spec has {identity(spec)}"
            )
    else:
        ckpt.atomic_write_json(
            stored,
            {"identity": identity(spec), "canonical": canonical(spec), "spec": spec.model_dump(mode="json")},
        )


def run_lineage(
    spec: LineageSpec,
    *,
    workdir: str | os.PathLike,
    device: str | torch.device = "cpu",
    on_level: Callable[[LevelResult], None] | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
) -> LineageResult:
    """Run (or finish) levels 0..L of `spec` under `workdir`; see the module docstring.

    on_level: called once per level in order, for read-back levels too (`resumed=True`), so a
        tracker can fill in whatever it missed before an interruption.
    on_epoch: called with (level, epoch) after each progress checkpoint.
    Two processes given the same lineage (two sweeps, or a search proposing a point twice) take
    turns on a file lock: the second one reads back what the first computed.
    """
    from trainables.fused import check_mode  # fused builds on this module

    root = ckpt.lineage_dir(workdir, lineage_id(spec))
    with ckpt.exclusive_lock(root / ".lock"):
        ckpt.remove_temporaries(root)  # half-written files of a killed run
        device = resolve_device(device)
        check_mode(workdir, lineage_id(spec), fused=False, precision=resolve_precision(spec.precision, device))
        run = _Run(spec, Path(workdir), device, on_epoch)
        results = []
        for plan in level_plans(spec, run.steps_per_epoch):
            result = run.level(plan)
            results.append(result)
            if on_level is not None:
                on_level(result)
            if run.should_stop(result):
                break
    return LineageResult(run.lineage_id, config_id(spec), spec, tuple(results))


class _Run:
    """The state shared by the levels of one call of run_lineage, or of one lineage of a bundle
    (`fused=True`: `trainables.fused` trains the model as a slice of a stack and calls the level
    steps here; its checkpoints say `"fused": True`)."""

    def __init__(self, spec: LineageSpec, workdir: Path, device: torch.device, on_epoch, *, fused: bool = False):
        self.spec, self.workdir, self.device, self.on_epoch = spec, workdir, device, on_epoch
        self.fused = fused
        self.precision = resolve_precision(spec.precision, device)
        self.lineage_id = lineage_id(spec)
        self.root = ckpt.lineage_dir(workdir, self.lineage_id)
        _check_spec(self.root, spec)
        self.splits = load_dataset(
            spec.dataset, options=spec.dataset_options, data_root=spec.data_root, download=spec.download
        )
        self.resident = _fits_on_device(self.splits, device, spec.max_device_data_gb)
        # Resident data lives on the device as one tensor (batches are index slices there);
        # otherwise it stays in pinned host memory and each batch is copied over (streaming).
        place = (lambda t: t.to(device)) if self.resident else (lambda t: t.pin_memory() if device.type == "cuda" else t)
        self.x_train, self.y_train = place(self.splits.x_train), place(self.splits.y_train)
        self.x_test, self.y_test = place(self.splits.x_test), place(self.splits.y_test)
        self.steps_per_epoch = -(-len(self.x_train) // spec.train.batch_size)
        self.model = _init_model(spec, self.splits.info, _seed_of(spec.seed, "init"), device)
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
        self.done = set(ckpt.complete_levels(workdir, self.lineage_id))
        self._ensure_rewind_point()

    # -- stopping rule ------------------------------------------------------------------------
    def should_stop(self, result: LevelResult) -> bool:
        """Pellegrini & Biroli's rule: no further level once some layer keeps at most a fraction
        of its units connected. Recorded in `stopped.json` so that planners know the lineage is
        complete at this level."""
        threshold = self.spec.prune.stop_connected_fraction
        if threshold is None:
            return False
        fraction = min(connected_fractions(self._load_level(result.level).masks).values())
        if fraction > threshold:
            return False
        stopped = self.root / STOPPED_FILE
        if not stopped.exists():
            ckpt.atomic_write_json(stopped, {"level": result.level, "connected_fraction": fraction})
        return True

    # -- rewind point -------------------------------------------------------------------------
    @property
    def rewind_path(self) -> Path:
        return self.root / "rewind.pt"

    def _ensure_rewind_point(self) -> None:
        if self.spec.prune.rewind == "step":
            total = self.spec.train.epochs * self.steps_per_epoch
            if self.spec.prune.rewind_step > total:
                raise ValueError(
                    f"prune.rewind_step={self.spec.prune.rewind_step} exceeds the {total} steps of level 0"
                )
        elif not self.rewind_path.exists():
            # The initial weights: the original lottery ticket's rewind point (and the dense start).
            ckpt.save_torch(self.rewind_path, {"model": self.model.state_dict(), "step": 0})

    def _save_step_rewind(self, step: int) -> None:
        if self.spec.prune.rewind == "step" and step == self.spec.prune.rewind_step:
            ckpt.save_torch(self.rewind_path, {"model": self._model_state(), "step": step})

    def _model_state(self) -> dict[str, torch.Tensor]:
        # A fused model's tensors are views of its stack: saving them as they are would save the
        # whole stack.
        return own_state(self.model) if self.fused else self.model.state_dict()

    # -- levels -------------------------------------------------------------------------------
    def level(self, plan: LevelPlan) -> LevelResult:
        if plan.level in self.done:
            return self._read_back(plan.level)
        masks, state = self._resume_or_start(plan)
        return self._train(plan, masks, state)

    def _resume_or_start(self, plan: LevelPlan) -> tuple[Masks, dict[str, Any]]:
        """Masks and training state (epoch, step, train_losses, wall_s, optimizer) of an unfinished
        level, with the model set to match: from its progress checkpoint, else from the start."""
        progress = self._progress_for(plan.level)
        if progress is None:
            masks = self._start_level(plan)
            return masks, {"epoch": 0, "step": 0, "train_losses": [], "wall_s": 0.0, "optimizer": None}
        self.model.load_state_dict(progress["model"])
        return progress["masks"], progress

    def _progress_for(self, level: int) -> dict | None:
        path = self.root / PROGRESS_FILE
        if not path.exists():
            return None
        progress = ckpt.load_torch(path, self.device)
        return progress if progress["level"] == level else None

    def _load_level(self, level: int) -> ckpt.LevelCheckpoint:
        return ckpt.load_checkpoint(ckpt.level_dir(self.workdir, self.lineage_id, level), self.device)

    def _start_level(self, plan: LevelPlan) -> Masks:
        """Masks of this level, with the model set to the weights training starts from."""
        if plan.level == 0:
            return dense_masks(self.model, self.names)
        source = self._load_level(plan.source_level)
        self.model.load_state_dict(source.model)
        seed = _seed_of(self.spec.seed, "random_prune", plan.level)
        masks = level_masks(self.spec, plan, self.model, source.masks, seed)
        if self.spec.prune.control == "random_reinit":
            init_seed = _seed_of(self.spec.seed, "reinit", plan.level)
            fresh = _init_model(self.spec, self.splits.info, init_seed, self.device)
            self.model.load_state_dict(fresh.state_dict())
        elif self.spec.prune.rewind in ("init", "step"):
            self.model.load_state_dict(ckpt.load_torch(self.rewind_path, self.device)["model"])
        # rewind lr / finetune: keep the source level's trained weights.
        apply_masks(self.model, masks)
        return masks

    def peak_lr(self, plan: LevelPlan) -> float:
        return plan.lr if plan.lr is not None else self.spec.train.lr

    def lr_of_step(self, plan: LevelPlan, step: int) -> float:
        """The learning rate of `step` (counted within the level): a pure function of the step."""
        peak = self.peak_lr(plan)
        if plan.constant_lr:
            return peak
        return lr_at(step, train=self.spec.train, steps_per_epoch=self.steps_per_epoch, peak_lr=peak)

    def _train(self, plan: LevelPlan, masks: Masks, state: dict) -> LevelResult:
        spec = self.spec
        train = spec.train
        optimizer = make_optimizer(self.model, train, self.peak_lr(plan))
        if state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        epoch, step = state["epoch"], state["step"]
        losses, wall = list(state["train_losses"]), float(state["wall_s"])

        def on_step(s: int) -> None:
            if plan.level == 0:
                self._save_step_rewind(s)
            if plan.gradual is not None:
                plan.gradual.update(s, self.model, masks)

        while epoch < plan.epochs:
            t0 = time.perf_counter()
            batches = epoch_batches(
                self.x_train, self.y_train, batch_size=train.batch_size,
                epoch_seed=_seed_of(spec.seed, "data", plan.level, epoch), augment=self.splits.info.augment,
            )
            if not self.resident:
                batches = _to_device(batches, self.device, self.channels_last)
            loss, n = train_epoch(
                self.model, optimizer, batches, masks=masks, lr_of_step=lambda s: self.lr_of_step(plan, s),
                first_step=step, on_step=on_step, forward=self.forward, precision=self.precision,
            )
            epoch, step, wall = epoch + 1, step + n, wall + time.perf_counter() - t0
            losses.append(loss)
            saved = self._save_progress(plan, masks, optimizer.state_dict(), epoch=epoch, step=step,
                                        losses=losses, wall=wall)
            if saved and self.on_epoch is not None:
                self.on_epoch(plan.level, epoch)
        return self._finish_level(plan, masks, optimizer.state_dict(), step=step, losses=losses, wall=wall)

    def _save_progress(self, plan: LevelPlan, masks: Masks, optimizer: dict, *, epoch: int, step: int,
                       losses: list[float], wall: float) -> bool:
        """Write the in-level resume point after `epoch` if the checkpoint period says so (never
        after the last epoch: the level checkpoint follows). Returns whether it was written."""
        if epoch >= plan.epochs or epoch % self.spec.checkpoint_every_epochs:
            return False
        ckpt.save_torch(self.root / PROGRESS_FILE, {
            "level": plan.level, "epoch": epoch, "step": step, "train_losses": losses, "wall_s": wall,
            "model": self._model_state(), "masks": masks, "optimizer": optimizer, "fused": self.fused,
            "precision": self.precision,
        })
        return True

    def _finish_level(self, plan: LevelPlan, masks: Masks, optimizer: dict, *, step: int, losses: list[float],
                      wall: float) -> LevelResult:
        """Evaluate the trained level and write its checkpoint (`optimizer`: the state dict)."""
        test_loss, test_acc = evaluate(self.forward, self.x_test, self.y_test, device=self.device,
                                       precision=self.precision)
        report = sparsity_report(self.model, masks)
        metrics = {
            "sparsity": report.sparsity, "sparsity_all": report.sparsity_all, "test_acc": test_acc,
            "test_loss": test_loss, "train_loss": losses[-1] if losses else float("nan"),
            "epochs": float(plan.epochs), "wall_s": wall,
        }
        layers = [{"layer": l.layer, "n_params": l.n_params, "n_zero": l.n_zero} for l in report.layers]

        def fill(tmp: Path) -> None:
            torch.save({
                "model": self._model_state(), "masks": masks, "optimizer": optimizer,
                "progress": {"level": plan.level, "epoch": plan.epochs, "step": step},
                "fused": self.fused, "precision": self.precision, "rng": torch.get_rng_state(),
            }, tmp / ckpt.LEVEL_STATE)
            ckpt.atomic_write_json(tmp / ckpt.LEVEL_METRICS,
                                   {"metrics": metrics, "layers": layers, "precision": self.precision})
            ckpt.atomic_write_json(tmp / "spec.json", json.loads((self.root / "spec.json").read_text()))

        path = ckpt.level_dir(self.workdir, self.lineage_id, plan.level)
        ckpt.write_dir_atomically(path, fill)
        self.done.add(plan.level)
        return LevelResult(
            self.lineage_id, plan.level, checkpoint_id(self.lineage_id, plan.level), path, metrics,
            report.layers, resumed=False, precision=self.precision,
        )

    def _read_back(self, level: int) -> LevelResult:
        path = ckpt.level_dir(self.workdir, self.lineage_id, level)
        stored = json.loads((path / ckpt.LEVEL_METRICS).read_text())
        layers = tuple(LayerSparsity(d["layer"], d["n_params"], d["n_zero"]) for d in stored["layers"])
        return LevelResult(
            self.lineage_id, level, checkpoint_id(self.lineage_id, level), path, stored["metrics"], layers,
            resumed=True, precision=stored.get("precision"),
        )

