"""The Ray Tune function trainable: one trial runs one lineage and reports once per level.

The only module of `trainables` that imports `ray.tune`. The lineage resumes from its own
checkpoints in the workdir (by lineage id), so a retried trial, or a trial of a new driver after
the old one died, continues where the lineage stopped rather than where Tune thinks it did.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray import tune

from trainables.ids import lineage_id
from trainables.lineage import LevelResult, run_lineage
from trainables.specs import LineageSpec, with_overrides
from trainables.tracking import (
    TAG, TrackingRef, ensure_parent_run, find_level_runs, lineage_tags, log_level, set_lineage_status,
)


def trial_spec(config: dict[str, Any]) -> LineageSpec:
    """The lineage of a trial: given whole (grid), or a base plus sampled fields (search)."""
    lineage = config["lineage"]
    if "spec" in lineage:
        return LineageSpec.model_validate(lineage["spec"])
    return LineageSpec.model_validate(with_overrides(lineage["base"], config.get("sample", {})))


def trial_name(trial) -> str:
    """Trial folders are named by lineage id (a search trial's id is known once it is sampled)."""
    try:
        return lineage_id(trial_spec(trial.config))
    except Exception:  # an invalid sample: the trial will fail with the validation error
        return trial.trial_id


def lineage_trainable(config: dict[str, Any]) -> None:
    """config["lineage"]: {"spec" | "base", "workdir", "tracking": TrackingRef fields (the
    parent run id only when the driver created it)}; config["sample"]: sampled dotted fields."""
    spec = trial_spec(config)
    lineage = config["lineage"]
    tracking = dict(lineage["tracking"])
    client = MlflowClient(tracking["tracking_uri"])
    if not tracking.get("parent_run_id"):
        tracking["parent_run_id"] = ensure_parent_run(
            client, tracking["experiment_id"], spec, sweep=tracking["sweep"], code_rev=tracking["code_rev"]
        )
    ref = TrackingRef(**tracking)
    tags = {k: v for k, v in lineage_tags(spec, ref.code_rev).items() if k != f"{TAG}kind"}
    set_lineage_status(client, ref.parent_run_id, "RUNNING")
    n_levels = spec.prune.n_levels + 1
    # Level runs that already exist (a resumed lineage); levels logged from here on are new.
    known = find_level_runs(client, lineage_id(spec), [ref.experiment_id])

    def on_level(result: LevelResult) -> None:
        log_level(client, ref, result, tags=tags, known=known)
        metrics = {"level": result.level, "n_levels": n_levels, "resumed": result.resumed,
                   "lineage_id": result.lineage_id, **result.metrics}
        with tempfile.TemporaryDirectory() as tmp:
            # The level's weights stay in the lineage folder (and MLflow); Tune's checkpoint is a
            # small pointer to it, so a 1,000-lineage sweep does not copy every level twice.
            pointer = {"lineage_id": result.lineage_id, "level": result.level,
                       "checkpoint_id": result.checkpoint_id, "path": str(result.checkpoint_dir)}
            Path(tmp, "pointer.json").write_text(json.dumps(pointer))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    try:
        run_lineage(spec, workdir=lineage["workdir"], device=spec.device, on_level=on_level)
    except BaseException:
        set_lineage_status(client, ref.parent_run_id, "FAILED")
        raise
    set_lineage_status(client, ref.parent_run_id, "FINISHED")
