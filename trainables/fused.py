"""Fused training: K lineages of one configuration (different seeds) trained together in one
process as one stacked model, each lineage keeping its own folder, checkpoints and results.

Everything per lineage is the engine's own code: a `LineageRun` loads the data, initialises the
model from the lineage's seed, computes each level's masks and rewinds (`resume_or_start`),
draws the batches of every epoch with the lineage's epoch seed (`batches`) and writes its
progress and level checkpoints (`save_progress`, `finish_level`). Only the training step is
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
from typing import Any

import torch

from trainables.checkpoints import LevelProgress, LineageCheckpoints
from trainables.ids import config_id, lineage_id
from trainables.lineage import LineageResult
from trainables.lineage_run import LevelResult, LineageRun, resolve_device, warn_set_aside
from trainables.loop import autocast, make_optimizer, resolve_precision
from trainables.schedules import LevelPlan, level_plans
from trainables.specs import RUNTIME_FIELDS, LineageSpec
from trainables.stacked import StackedModel, StackedOptimizer, structure_of
from trainables.storage import Store, as_store

__all__ = ["check_bundle", "run_bundle"]


def run_bundle(
    specs: Sequence[LineageSpec],
    *,
    workdir: str | os.PathLike | Store,
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
    device = resolve_device(device)
    workdir = as_store(workdir)  # one for every read and write of the bundle
    stores = [LineageCheckpoints(workdir, lineage_id(s)) for s in specs]
    with contextlib.ExitStack() as locks:
        for store in sorted(stores, key=lambda c: c.lineage_id):  # one global order: no deadlock
            locks.enter_context(store.lock())
        precision = resolve_precision(specs[0].precision, device)
        for store in stores:
            store.remove_temporaries()  # half-written files of a killed run
            warn_set_aside(store)
            store.check_mode(fused=True, precision=precision)
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


def _make_runs(specs: list[LineageSpec], workdir: Store, device: torch.device) -> list[LineageRun]:
    runs = []
    for spec in specs:
        run = LineageRun(spec, workdir=workdir, device=device, fused=True)
        if runs and run.resident == runs[0].resident:
            run.share_data(runs[0])  # one copy of the data for the bundle (same config, same data)
        runs.append(run)
    return runs


Training = tuple[LineageRun, LevelProgress]  # one lineage's run and where its level stands


class _Bundle:
    """The runs of one run_bundle call, trained level by level."""

    def __init__(self, runs: list[LineageRun], device: torch.device, on_epoch):
        self.runs, self.device, self.on_epoch = runs, device, on_epoch
        self.structure = structure_of(runs[0].model)
        self.train = runs[0].spec.train

    def level(self, plan: LevelPlan, active: list[int]) -> list[LevelResult]:
        """Results of `plan.level` for the lineages `active` (indices into runs), in order."""
        results: dict[int, LevelResult] = {}
        todo: dict[int, Training] = {}
        for i in active:
            run = self.runs[i]
            if plan.level in run.done:
                results[i] = run.read_back(plan.level)
            else:
                todo[i] = (run, run.resume_or_start(plan))
        while pending := [t for t in todo.values() if t[1].epoch < plan.epochs]:
            # Laggards first: the lineages at the earliest epoch train alone until they catch up.
            epoch = min(progress.epoch for _, progress in pending)
            until = min([p.epoch for _, p in pending if p.epoch > epoch], default=plan.epochs)
            self._train_together(plan, [t for t in pending if t[1].epoch == epoch], until)
        for i, (run, progress) in todo.items():
            results[i] = run.finish_level(plan, progress)
        return [results[i] for i in active]

    def _train_together(self, plan: LevelPlan, members: list[Training], until: int) -> None:
        """Train `members` (all at the same epoch and step) as one stack up to epoch `until`."""
        runs = [run for run, _ in members]
        stack = StackedModel([run.model for run in runs], self.structure)
        group = make_optimizer(runs[0].model, self.train, lr=runs[0].peak_lr(plan)).state_dict()["param_groups"][0]
        optimizer = StackedOptimizer(stack.params, kind=self.train.optimizer, group=group,
                                     states=[progress.optimizer for _, progress in members])
        optimizer.set_masks([progress.masks for _, progress in members])
        epoch, step = members[0][1].epoch, members[0][1].step
        while epoch < until:
            t0 = time.perf_counter()
            losses, n = self._epoch(plan, stack, optimizer, members, epoch, step)
            epoch, step, wall = epoch + 1, step + n, time.perf_counter() - t0
            for k, (run, progress) in enumerate(members):
                # wall_s is the wall-clock time of the level, which the lineages of a stack share.
                progress.epoch, progress.step, progress.wall_s = epoch, step, progress.wall_s + wall
                progress.train_losses.append(losses[k])
                progress.optimizer = optimizer.state_dict(k, run.lr_of_step(plan, step - 1))
            saved = [run.save_progress(plan, progress) for run, progress in members]
            if any(saved) and self.on_epoch is not None:
                self.on_epoch(plan.level, epoch)

    def _epoch(self, plan, stack, optimizer, members, epoch, first_step) -> tuple[list[float], int]:
        """One epoch of every lineage of the stack. Returns (mean training loss per lineage, steps)."""
        runs = [run for run, _ in members]
        epochs = [run.batches(plan, epoch, channels_last=False) for run in runs]
        total = torch.zeros(len(runs), dtype=torch.float64, device=self.device)
        forward_context = autocast(self.device, runs[0].precision)  # once per epoch, as train_epoch does
        step = first_step
        for batches in zip(*epochs):
            lrs = [run.lr_of_step(plan, step) for run in runs]
            x = torch.stack([b[0] for b in batches])
            y = torch.stack([b[1] for b in batches])
            with forward_context:
                losses = stack.losses(x, y)
            stack.zero_grad()
            losses.sum().backward()  # lineage k's loss depends on its own slice only
            optimizer.step(lrs)
            total += losses.detach().double()
            step += 1
            for k, (run, progress) in enumerate(members):
                run.after_step(plan, progress, step=step)
                if plan.gradual is not None:
                    optimizer.sync_masks(k, progress.masks)
        n = step - first_step
        return [t / n if n else float("nan") for t in total.tolist()], n
