"""The Iterative Magnitude Pruning engine: models, data, masks, schedules, one lineage end to end."""
from trainables.checkpoints import LevelCheckpoint, LineageCheckpoints, load_checkpoint
from trainables.data import DATASETS, load_dataset
from trainables.fused import run_bundle
from trainables.ids import checkpoint_id, config_id, lineage_id
from trainables.lineage import LineageResult, run_lineage
from trainables.lineage_run import LevelResult
from trainables.models import MODELS, build_model
from trainables.specs import LineageSpec, PruneSpec, TrainSpec
from trainables.storage import Store, open_store

__all__ = [
    "DATASETS",
    "MODELS",
    "LevelCheckpoint",
    "LevelResult",
    "LineageCheckpoints",
    "LineageResult",
    "LineageSpec",
    "PruneSpec",
    "Store",
    "TrainSpec",
    "build_model",
    "checkpoint_id",
    "config_id",
    "lineage_id",
    "load_checkpoint",
    "load_dataset",
    "open_store",
    "run_bundle",
    "run_lineage",
]
