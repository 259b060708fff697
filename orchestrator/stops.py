"""Lineages that a search's scheduler (ASHA) stopped before their last level.

Tune ends such a trial without the trainable returning, so nothing in the lineage closes its
parent run. The driver sees the stop (`on_trial_complete` with a last result short of the
lineage's last level) and records it in MLflow: the parent run gets
`impsweep.stopped.<sweep>` = the last level completed and is closed FINISHED. The plan then
counts the lineage as finished ("stopped") for that sweep, so a restarted search neither
resumes it nor proposes its place again, and `impsweep status` shows it.
"""
from __future__ import annotations

from mlflow.tracking import MlflowClient
from ray.tune import Callback

from trainables.checkpoints import LineageCheckpoints
from trainables.tracking import mark_stopped


def stopped_after(result: dict | None, workdir: str) -> int | None:
    """The last complete level of a trial that ended short of its lineage's last level (None
    for one that ran to its end, the planned last level or where its own stopping rule ended
    it). Level and epoch reports both carry the last complete level."""
    if not result or not {"level", "n_levels", "lineage_id"} <= result.keys():
        return None
    level = int(result["level"])
    last = LineageCheckpoints(workdir, result["lineage_id"]).stopped_level()
    last = int(result["n_levels"]) - 1 if last is None else last
    return level if level < last else None


class StopRecorder(Callback):
    """Records in MLflow every lineage the scheduler stopped early (see the module doc)."""

    def __init__(self, tracking_uri: str, *, sweep: str, workdir: str):
        self.tracking_uri, self.sweep, self.workdir = tracking_uri, sweep, workdir

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result
        level = stopped_after(result, self.workdir)
        if level is not None:
            mark_stopped(MlflowClient(self.tracking_uri), result["lineage_id"], sweep=self.sweep, level=level)
