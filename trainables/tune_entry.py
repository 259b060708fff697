"""The Ray Tune function trainable: one trial runs one lineage and reports once per level, and
within a long level at progress checkpoints (see `_Recorder`).

The only module of `trainables` that imports `ray.tune`. The lineage resumes from its own
checkpoints in the workdir (by lineage id), so a retried trial, or a trial of a new driver after
the old one died, continues where the lineage stopped rather than where Tune thinks it did.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.tracking import MlflowClient
from ray import tune

from trainables.ids import lineage_id
from trainables.level_index import IndexedLevel, write_entry
from trainables.lineage import run_lineage
from trainables.lineage_run import LevelResult
from trainables.specs import LineageSpec
from trainables.tracking import (
    LEVEL_METRICS, TAG, TrackingRef, ensure_parent_run, find_level_runs, lineage_tags, log_level, set_lineage_status,
)
from trainables.trials import BundleTrial, SearchTrial, name_trial, read_trial

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


def trial_name(trial: Trial) -> str:
    """Trial folders are named by lineage id (`trainables.trials.name_trial`)."""
    return name_trial(trial.config, trial_id=trial.trial_id)


def lineage_trainable(config: dict[str, Any]) -> None:
    """Runs the trial `config` describes (`trainables.trials`): a lineage, the lineage a search
    trial sampled, or a bundle of lineages trained fused. The driver creates a lineage's parent
    run, except a search trial's (its lineage is known only here)."""
    trial = read_trial(config)
    if isinstance(trial, BundleTrial):
        return _bundle_trainable(trial)
    if isinstance(trial, SearchTrial):
        trial = trial.lineage()
    spec, ref = trial.spec, trial.tracking
    if not ref.parent_run_id:
        ref = replace(ref, parent_run_id=ensure_parent_run(
            MlflowClient(ref.tracking_uri), spec, experiment_id=ref.experiment_id, sweep=ref.sweep,
            code_rev=ref.code_rev,
        ))
    recorder = _Recorder(spec, ref)
    try:
        run_lineage(spec, workdir=trial.workdir, device=spec.device, on_level=recorder.level,
                    on_epoch=recorder.epoch)
    except BaseException as error:
        if not _stopped_by_tune(error):
            recorder.finish("FAILED")
        raise
    recorder.finish("FINISHED")


def _stopped_by_tune(error: BaseException) -> bool:
    """Tune ends a trial it stops (a scheduler's decision, or the experiment's end) with
    SystemExit(0) out of `tune.report`. That is no failure: the driver records a scheduler's stop
    (`orchestrator.stops`), and a lineage cut off by the experiment's end resumes on the next run."""
    return isinstance(error, SystemExit) and error.code in (0, None)


class _Recorder:
    """MLflow and Tune reporting of one lineage (shared by single and fused trials).

    Tune gets one report per level (`kind: "level"`), and within a level one at the first
    progress checkpoint `spec.report_every_s` seconds after the last report (`kind: "epoch"`),
    so that a long level shows progress. An epoch report cannot pass for a level: its `level`,
    metrics (the search metric among them, which Tune requires in every result) and checkpoint
    pointer are those of the last complete level (-1, NaN and no checkpoint before level 0 is
    complete), so ASHA's time attribute `level` advances on level reports only and a searcher
    sees level metrics only; `training_level` and `training_epoch` say where training stands. A
    trial ends on a level report, the result Optuna takes as the trial's value.
    """

    def __init__(self, spec: LineageSpec, ref: TrackingRef):
        self.client = MlflowClient(ref.tracking_uri)
        self.ref = ref
        self.tags = {k: v for k, v in lineage_tags(spec, self.ref.code_rev).items() if k != f"{TAG}kind"}
        self.lineage_id = lineage_id(spec)
        self.known: dict[int, Any] | None = None  # the lineage's level runs, read at its first level
        self.indexed: dict[int, IndexedLevel] = {}  # its entry in the experiment's level index
        self.n_levels = spec.prune.n_levels + 1
        self.report_every_s = spec.report_every_s
        self.last_level: LevelResult | None = None
        self.reported_at = time.monotonic()
        set_lineage_status(self.client, self.ref.parent_run_id, status="RUNNING")

    def level(self, result: LevelResult) -> None:
        """Called under the lineage's lock (`run_lineage`, `run_bundle`). The level runs are read
        at the first level, not when the trial starts: another run's trial may hold the lock
        meanwhile and log the levels this one will then read back."""
        if self.known is None:
            self.known = find_level_runs(self.client, self.lineage_id, experiment_ids=[self.ref.experiment_id])
            self.indexed = {level: IndexedLevel(run.info.run_id, dict(run.data.metrics))
                            for level, run in self.known.items() if run.info.status == "FINISHED"}
        run_id = log_level(self.client, result, ref=self.ref, tags=self.tags, known=self.known)
        if result.level not in self.indexed:
            self.indexed[result.level] = IndexedLevel(run_id, {k: float(result.metrics[k]) for k in LEVEL_METRICS})
        write_entry(self.client, self.ref.experiment_id, lineage_id=self.lineage_id, levels=self.indexed)
        self.last_level = result
        self._report({"kind": "level", "level": result.level, "resumed": result.resumed, **result.metrics}, result)

    def epoch(self, level: int, epoch: int) -> None:
        """After the progress checkpoint of `epoch` (epochs done) of `level`: report if it is time."""
        last = self.last_level
        done = -1 if last is None else last.level
        if done != level - 1:  # a lineage of a bundle that stopped early: the others train `level`
            return
        if self.report_every_s is None or time.monotonic() - self.reported_at < self.report_every_s:
            return
        metrics = dict.fromkeys(LEVEL_METRICS, math.nan) if last is None else last.metrics
        self._report({"kind": "epoch", "level": done, "resumed": False, **metrics,
                      "training_level": level, "training_epoch": epoch}, last)

    def _report(self, metrics: dict[str, Any], level: LevelResult | None) -> None:
        """tune.report with a pointer to `level`'s checkpoint (Tune's checkpoints stay tiny)."""
        metrics = {**metrics, "n_levels": self.n_levels, "lineage_id": self.lineage_id}
        if level is None:
            tune.report(metrics)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                pointer = {"lineage_id": level.lineage_id, "level": level.level,
                           "checkpoint_id": level.checkpoint_id, "path": str(level.checkpoint_dir)}
                Path(tmp, "pointer.json").write_text(json.dumps(pointer))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        self.reported_at = time.monotonic()

    def finish(self, status: str) -> None:
        set_lineage_status(self.client, self.ref.parent_run_id, status=status)


def _bundle_trainable(bundle: BundleTrial) -> None:
    """K lineages of one configuration trained as one stacked model; each keeps its own MLflow
    runs, checkpoints and resume."""
    from trainables.fused import run_bundle

    specs = [item.spec for item in bundle.lineages]
    recorders = {lineage_id(s): _Recorder(s, item.tracking) for s, item in zip(specs, bundle.lineages)}

    def on_epoch(level: int, epoch: int) -> None:
        for recorder in recorders.values():
            recorder.epoch(level, epoch)

    try:
        run_bundle(specs, workdir=bundle.workdir, device=specs[0].device,
                   on_level=lambda result: recorders[result.lineage_id].level(result), on_epoch=on_epoch)
    except BaseException as error:
        if not _stopped_by_tune(error):
            for recorder in recorders.values():
                recorder.finish("FAILED")
        raise
    for recorder in recorders.values():
        recorder.finish("FINISHED")
