"""One IMP lineage end to end: level 0 is the dense network, then prune → rewind → retrain.

Resumable at epoch granularity: complete levels are read back from disk, and an interrupted
level continues from its newest progress checkpoint, so that (on CPU) a lineage that was stopped
and resumed ends bit-identical to one that never stopped.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainables.checkpoints import LevelProgress, LineageCheckpoints
from trainables.ids import config_id, lineage_id
from trainables.lineage_run import LevelResult, LineageRun, resolve_device, warn_set_aside
from trainables.loop import make_optimizer, resolve_precision, train_epoch
from trainables.schedules import LevelPlan, level_plans
from trainables.specs import LineageSpec
from trainables.storage import Store, as_store


@dataclass(frozen=True)
class LineageResult:
    lineage_id: str
    config_id: str
    spec: LineageSpec
    levels: tuple[LevelResult, ...]


def run_lineage(
    spec: LineageSpec,
    *,
    workdir: str | os.PathLike | Store,
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
    device = resolve_device(device)
    store = as_store(workdir)  # one for the lineage's every read and write
    checkpoints = LineageCheckpoints(store, lineage_id(spec))
    results = []
    with checkpoints.lock():
        checkpoints.remove_temporaries()  # half-written files of a killed run
        warn_set_aside(checkpoints)
        checkpoints.check_mode(fused=False, precision=resolve_precision(spec.precision, device))
        run = LineageRun(spec, workdir=store, device=device)
        for plan in level_plans(spec, run.steps_per_epoch):
            result = run.read_back(plan.level) if plan.level in run.done else _train_level(run, plan, on_epoch)
            results.append(result)
            if on_level is not None:
                on_level(result)
            if run.should_stop(result):
                break
    return LineageResult(run.lineage_id, config_id(spec), spec, tuple(results))


def _train_level(run: LineageRun, plan: LevelPlan, on_epoch: Callable[[int, int], None] | None) -> LevelResult:
    """Train level `plan.level` of `run` alone, from where it stands, and commit it."""
    progress = run.resume_or_start(plan)
    optimizer = make_optimizer(run.model, run.spec.train, lr=run.peak_lr(plan))
    if progress.optimizer is not None:
        optimizer.load_state_dict(progress.optimizer)
    while progress.epoch < plan.epochs:
        t0 = time.perf_counter()
        loss, n = train_epoch(
            run.model, optimizer, batches=run.batches(plan, progress.epoch), masks=progress.masks,
            lr_of_step=lambda s: run.lr_of_step(plan, s), first_step=progress.step,
            on_step=lambda s: run.after_step(plan, progress, step=s), forward=run.forward, precision=run.precision,
        )
        _end_epoch(progress, loss=loss, steps=n, wall_s=time.perf_counter() - t0, optimizer=optimizer)
        if run.save_progress(plan, progress) and on_epoch is not None:
            on_epoch(plan.level, progress.epoch)
    return run.finish_level(plan, progress)


def _end_epoch(progress: LevelProgress, *, loss: float, steps: int, wall_s: float,
               optimizer: torch.optim.Optimizer) -> None:
    progress.epoch += 1
    progress.step += steps
    progress.wall_s += wall_s
    progress.train_losses.append(loss)
    progress.optimizer = optimizer.state_dict()
