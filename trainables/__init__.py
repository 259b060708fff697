"""The Iterative Magnitude Pruning engine: models, data, masks, schedules, one lineage end to end."""
from trainables.checkpoints import LevelCheckpoint, load_checkpoint
from trainables.data import DATASETS, load_dataset
from trainables.ids import checkpoint_id, config_id, lineage_id
from trainables.lineage import LevelResult, LineageResult, run_lineage
from trainables.models import MODELS, build_model
from trainables.specs import LineageSpec, PruneSpec, TrainSpec

__all__ = [
    "DATASETS",
    "MODELS",
    "LevelCheckpoint",
    "LevelResult",
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
    "run_lineage",
]
