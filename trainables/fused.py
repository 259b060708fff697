"""Fused training: K lineages of one configuration (different seeds) trained together in one
process as one stacked model, each lineage keeping its own folder, checkpoints and results.

Everything per lineage is the engine's own code: `_Run` loads the data, initialises the model
from the lineage's seed, computes each level's masks and rewinds (`_Run._start_level`), writes
its progress and level checkpoints (`_Run._save_progress`, `_Run._finish_level`), and the data
order of every epoch is `epoch_batches` with the lineage's epoch seed. Only the training step is
shared: the K batches of a step are stacked and go through one vmapped forward/backward
and one masked optimizer step (`trainables.stacked`). On CPU the result equals K separate
`run_lineage` calls to about 1e-6 relative (batched matrix products round differently), with the
same masks. That holds in fp32 only: with `precision: bf16` the stacked and separate products
round differently at bf16 precision, magnitude ties at pruning then break differently, and the
two agree in accuracy, not weight by weight.

A lineage resumes in the mode it started in: its level checkpoints and progress checkpoints say
`"fused": True` here, and `run_bundle` refuses a lineage whose checkpoints say otherwise (and,
as `run_lineage` does, one whose checkpoints record another precision).
Resuming a bundle continues each lineage from its own newest checkpoint; lineages that stopped at
different epochs (a crash between two lineages' writes) are trained alone until they catch up.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainables import checkpoints as ckpt
from trainables.data import epoch_batches
from trainables.ids import config_id, lineage_id
from trainables.lineage import (
    PROGRESS_FILE, LevelResult, LineageResult, _Run, _seed_of, _to_device, resolve_device,
)
from trainables.loop import _autocast, make_optimizer, resolve_precision
from trainables.masks import Masks
from trainables.schedules import LevelPlan, level_plans
from trainables.specs import RUNTIME_FIELDS, LineageSpec
from trainables.stacked import StackedModel, StackedOptimizer, structure_of

__all__ = ["check_bundle", "check_mode", "run_bundle", "trained_mode"]


def run_bundle(
    specs: Sequence[LineageSpec],
    *,
    workdir: str | os.PathLike,
    device: str | torch.device = "cpu",
    on_level: Callable[[LevelResult], None] | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
) -> list[LineageResult]:
    """Run (or finish) levels 0..L of every lineage in `specs`, trained together; results in order.

    specs: lineages of one config_id (identical but for `seed`), each seed once.
    on_level: called once per lineage per level (levels in order, lineages in `specs` order),
        read-back levels included, as `run_lineage` does for one lineage.
    on_epoch: called with (level, epoch) once the bundle's progress checkpoints of that epoch
        are written.
    Raises ValueError for specs that cannot share a bundle, and for a lineage whose existing
    checkpoints were trained unfused.
    """
    specs = list(specs)
    check_bundle(specs)
    workdir, device = Path(workdir), resolve_device(device)
    ids = [lineage_id(s) for s in specs]
    with contextlib.ExitStack() as locks:
        for lid in sorted(ids):  # one global order, so two overlapping bundles cannot deadlock
            locks.enter_context(ckpt.exclusive_lock(ckpt.lineage_dir(workdir, lid) / ".lock"))
        precision = resolve_precision(specs[0].precision, device)
        for lid in ids:
            ckpt.remove_temporaries(ckpt.lineage_dir(workdir, lid))  # half-written files of a killed run
            check_mode(workdir, lid, fused=True, precision=precision)
        runs = _make_runs(specs, workdir, device)
        bundle = _Bundle(runs, device, on_epoch)
        levels: list[list[LevelResult]] = [[] for _ in runs]
        active = list(range(len(runs)))
        for plan in level_plans(specs[0], runs[0].steps_per_epoch):
            still = []
            for i, result in zip(active, bundle.level(plan, active)):
                levels[i].append(result)
                if on_level is not None:
                    on_level(result)
                if not runs[i].should_stop(result):
                    still.append(i)
            active = still
            if not active:
                break
    return [LineageResult(run.lineage_id, config_id(run.spec), run.spec, tuple(lv)) for run, lv in zip(runs, levels)]


def check_bundle(specs: Sequence[LineageSpec]) -> None:
    """Raise ValueError, naming every offending field, unless `specs` can be one bundle."""
    if not specs:
        raise ValueError("specs: a bundle needs at least one lineage spec; got none")
    errors = []
    base = _shared_fields(specs[0])
    seen: dict[int, int] = {}
    for i, spec in enumerate(specs):
        if spec.seed in seen:
            errors.append(f"specs[{i}].seed={spec.seed} repeats specs[{seen[spec.seed]}].seed; "
                          "each lineage appears once in a bundle")
        seen.setdefault(spec.seed, i)
        own = _shared_fields(spec)
        for key in sorted(set(base) | set(own)):
            if base.get(key) != own.get(key):
                errors.append(f"specs[{i}].{key}={own.get(key)!r} differs from specs[0].{key}={base.get(key)!r}")
    if errors:
        raise ValueError("lineages of a bundle must share everything but seed (one config_id) and precision: "
                         + "; ".join(errors))


def _recorded(workdir: str | os.PathLike, lineage: str) -> dict[Path, dict[str, Any]]:
    """What each checkpoint of `lineage` (levels and the progress checkpoint) records of how it
    was trained: `fused` (a progress checkpoint without the key was written unfused, before
    progress checkpoints recorded it) and `precision` ("fp32"/"bf16"; None where a checkpoint
    predates the record)."""
    paths = [ckpt.level_dir(workdir, lineage, level) / ckpt.LEVEL_STATE
             for level in ckpt.complete_levels(workdir, lineage)]
    progress = ckpt.lineage_dir(workdir, lineage) / PROGRESS_FILE
    if progress.exists():
        paths.append(progress)
    out = {}
    for path in paths:
        state = ckpt.load_torch(path)
        out[path] = {"fused": bool(state.get("fused", False)), "precision": state.get("precision")}
    return out


def _agreed(recorded: dict[Path, dict[str, Any]], key: str, lineage: str) -> Any:
    """The one value of `key` that `lineage`'s checkpoints record (None: no checkpoint or no record)."""
    values = {path: rec[key] for path, rec in recorded.items() if rec[key] is not None}
    if len(set(values.values())) > 1:
        raise ValueError(f"lineage {lineage} has checkpoints of different {key}: "
                         + ", ".join(f"{path} {key}: {value}" for path, value in values.items()))
    return next(iter(values.values()), None)


def trained_mode(workdir: str | os.PathLike, lineage: str) -> bool | None:
    """Whether lineage `lineage` was trained fused (True), unfused (False), or not at all (None).
    Raises ValueError if its checkpoints disagree."""
    return _agreed(_recorded(workdir, lineage), "fused", lineage)


def check_mode(workdir: str | os.PathLike, lineage: str, *, fused: bool, precision: str | None = None) -> None:
    """Raise ValueError if lineage `lineage` has checkpoints trained in the other mode, or (given
    the resolved `precision`) in another precision; a lineage with no checkpoint yet may start in
    either."""
    recorded = _recorded(workdir, lineage)
    mode = _agreed(recorded, "fused", lineage)
    if mode is not None and mode != fused:
        want, was = ("fused", "unfused") if fused else ("unfused", "fused")
        raise ValueError(f"lineage {lineage} was trained {was} and cannot be resumed {want}: "
                         f"a lineage resumes in the mode it started in")
    was = _agreed(recorded, "precision", lineage)
    if precision is not None and was is not None and was != precision:
        raise ValueError(f"lineage {lineage} was trained with precision {was!r} and cannot be resumed with "
                         f"{precision!r}: a lineage resumes in the precision it started in (set precision: {was})")


def _shared_fields(spec: LineageSpec) -> dict[str, Any]:
    """What the lineages of one bundle must have in common: identity fields but seed, and the
    runtime field `precision` (one stack trains in one arithmetic)."""
    return {**_identity_fields(spec), "precision": spec.precision}


def _identity_fields(spec: LineageSpec) -> dict[str, Any]:
    """Dotted identity fields of `spec` but its seed, defaults included (so values can be shown)."""
    fields = _flat(spec.model_dump(mode="json"))
    return {k: v for k, v in fields.items() if k.split(".")[0] not in RUNTIME_FIELDS and k != "seed"}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and prefix + key not in ("model_options", "dataset_options"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _make_runs(specs: list[LineageSpec], workdir: Path, device: torch.device) -> list[_Run]:
    runs = []
    for spec in specs:
        run = _Run(spec, workdir, device, None, fused=True)
        if runs and run.resident == runs[0].resident:
            # One copy of the data for the bundle (same config, same data): drop this run's own.
            first = runs[0]
            run.x_train, run.y_train, run.x_test, run.y_test = first.x_train, first.y_train, first.x_test, first.y_test
        runs.append(run)
    return runs


@dataclass
class _Lineage:
    """One lineage's place within a level: its masks and where its training stands."""

    run: _Run
    masks: Masks
    epoch: int = 0
    step: int = 0
    train_losses: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    optimizer: dict | None = None


class _Bundle:
    """The runs of one run_bundle call, trained level by level."""

    def __init__(self, runs: list[_Run], device: torch.device, on_epoch):
        self.runs, self.device, self.on_epoch = runs, device, on_epoch
        self.structure = structure_of(runs[0].model)
        self.train = runs[0].spec.train

    def level(self, plan: LevelPlan, active: list[int]) -> list[LevelResult]:
        """Results of `plan.level` for the lineages `active` (indices into runs), in order."""
        results: dict[int, LevelResult] = {}
        todo: list[tuple[int, _Lineage]] = []
        for i in active:
            run = self.runs[i]
            if plan.level in run.done:
                results[i] = run._read_back(plan.level)
            else:
                masks, state = run._resume_or_start(plan)
                todo.append((i, _Lineage(run, masks, state["epoch"], state["step"], list(state["train_losses"]),
                                         float(state["wall_s"]), state["optimizer"])))
        lineages = [lin for _, lin in todo]
        while pending := [lin for lin in lineages if lin.epoch < plan.epochs]:
            # Laggards first: the lineages at the earliest epoch train alone until they catch up.
            epoch = min(lin.epoch for lin in pending)
            until = min([lin.epoch for lin in pending if lin.epoch > epoch], default=plan.epochs)
            self._train_together(plan, [lin for lin in pending if lin.epoch == epoch], until)
        for i, lin in todo:
            results[i] = lin.run._finish_level(plan, lin.masks, lin.optimizer, step=lin.step,
                                               losses=lin.train_losses, wall=lin.wall_s)
        return [results[i] for i in active]

    def _train_together(self, plan: LevelPlan, lineages: list[_Lineage], until: int) -> None:
        """Train `lineages` (all at the same epoch and step) as one stack up to epoch `until`."""
        runs = [lin.run for lin in lineages]
        stack = StackedModel([run.model for run in runs], self.structure)
        group = make_optimizer(runs[0].model, self.train, runs[0].peak_lr(plan)).state_dict()["param_groups"][0]
        optimizer = StackedOptimizer(stack.params, self.train.optimizer, group, [lin.optimizer for lin in lineages])
        optimizer.set_masks([lin.masks for lin in lineages])
        epoch, step = lineages[0].epoch, lineages[0].step
        while epoch < until:
            t0 = time.perf_counter()
            losses, n = self._epoch(plan, stack, optimizer, lineages, epoch, step)
            epoch, step, wall = epoch + 1, step + n, time.perf_counter() - t0
            for k, lin in enumerate(lineages):
                # wall_s is the wall-clock time of the level, which the lineages of a stack share.
                lin.epoch, lin.step, lin.wall_s = epoch, step, lin.wall_s + wall
                lin.train_losses.append(losses[k])
                lin.optimizer = optimizer.state_dict(k, lin.run.lr_of_step(plan, step - 1))
            self._save_progress(plan, lineages)

    def _epoch(self, plan, stack, optimizer, lineages, epoch, first_step) -> tuple[list[float], int]:
        """One epoch of every lineage of the stack. Returns (mean training loss per lineage, steps)."""
        runs = [lin.run for lin in lineages]
        epochs = [
            epoch_batches(run.x_train, run.y_train, batch_size=self.train.batch_size,
                          epoch_seed=_seed_of(run.spec.seed, "data", plan.level, epoch),
                          augment=run.splits.info.augment)
            for run in runs
        ]
        if not runs[0].resident:
            epochs = [_to_device(batches, self.device, False) for batches in epochs]
        total = torch.zeros(len(runs), dtype=torch.float64, device=self.device)
        autocast = _autocast(self.device, runs[0].precision)  # once per epoch, as train_epoch does
        step = first_step
        for batches in zip(*epochs):
            lrs = [run.lr_of_step(plan, step) for run in runs]
            x = torch.stack([b[0] for b in batches])
            y = torch.stack([b[1] for b in batches])
            with autocast:
                losses = stack.losses(x, y)
            stack.zero_grad()
            losses.sum().backward()  # lineage k's loss depends on its own slice only
            optimizer.step(lrs)
            total += losses.detach().double()
            step += 1
            self._after_step(plan, optimizer, lineages, step)
        n = step - first_step
        return [t / n if n else float("nan") for t in total.tolist()], n

    def _after_step(self, plan: LevelPlan, optimizer: StackedOptimizer, lineages: list[_Lineage], step: int) -> None:
        """The engine's on_step: the step rewind point of level 0, the gradual ramp's mask updates."""
        for k, lin in enumerate(lineages):
            if plan.level == 0:
                lin.run._save_step_rewind(step)
            if plan.gradual is not None:
                plan.gradual.update(step, lin.run.model, lin.masks)
                optimizer.sync_masks(k, lin.masks)

    def _save_progress(self, plan: LevelPlan, lineages: list[_Lineage]) -> None:
        saved = [
            lin.run._save_progress(plan, lin.masks, lin.optimizer, epoch=lin.epoch, step=lin.step,
                                   losses=lin.train_losses, wall=lin.wall_s)
            for lin in lineages
        ]
        if any(saved) and self.on_epoch is not None:
            self.on_epoch(plan.level, lineages[0].epoch)
