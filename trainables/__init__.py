"""The Iterative Magnitude Pruning engine: models, data, masks, schedules, one lineage end to end."""
from trainables.checkpoints import LevelCheckpoint, LineageCheckpoints, load_checkpoint
from trainables.data import DATASETS, load_dataset
from trainables.fused import run_bundle
from trainables.ids import checkpoint_id, config_id, lineage_id
from trainables.layout import Layout
from trainables.lineage import LineageResult, run_lineage
from trainables.lineage_run import LevelResult
from trainables.models import MODELS, build_model
from trainables.specs import LineageSpec, PruneSpec, TrainSpec

__all__ = [
    "DATASETS",
    "MODELS",
    "Layout",
    "LevelCheckpoint",
    "LevelResult",
    "LineageCheckpoints",
    "LineageResult",
    "LineageSpec",
    "PruneSpec",
    "TrainSpec",
    "build_model",
    "checkpoint_id",
    "config_id",
    "lineage_id",
    "load_checkpoint",
    "load_dataset",
    "run_bundle",
    "run_lineage",
]
