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

from trainables.lineage import LevelResult, run_lineage
from trainables.specs import LineageSpec
from trainables.tracking import TAG, TrackingRef, lineage_tags, log_level, set_lineage_status


def lineage_trainable(config: dict[str, Any]) -> None:
    """config["lineage"]: {"lineage_id", "spec": LineageSpec JSON, "workdir", "tracking": TrackingRef fields}."""
    config = config["lineage"]
    spec = LineageSpec.model_validate(config["spec"])
    ref = TrackingRef(**config["tracking"])
    client = MlflowClient(ref.tracking_uri)
    tags = {k: v for k, v in lineage_tags(spec, ref.code_rev).items() if k != f"{TAG}kind"}
    set_lineage_status(client, ref.parent_run_id, "RUNNING")

    def on_level(result: LevelResult) -> None:
        log_level(client, ref, result, tags=tags)
        metrics = {"level": result.level, "resumed": result.resumed, **result.metrics}
        with tempfile.TemporaryDirectory() as tmp:
            # The level's weights stay in the lineage folder (and MLflow); Tune's checkpoint is a
            # small pointer to it, so a 1,000-lineage sweep does not copy every level twice.
            pointer = {"lineage_id": result.lineage_id, "level": result.level,
                       "checkpoint_id": result.checkpoint_id, "path": str(result.checkpoint_dir)}
            Path(tmp, "pointer.json").write_text(json.dumps(pointer))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    try:
        run_lineage(spec, workdir=config["workdir"], device=spec.device, on_level=on_level)
    except BaseException:
        set_lineage_status(client, ref.parent_run_id, "FAILED")
        raise
    set_lineage_status(client, ref.parent_run_id, "FINISHED")
