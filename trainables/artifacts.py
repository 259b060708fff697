"""What a level's MLflow run holds of its checkpoint (`checkpoint_artifacts`): the weights, the
whole level folder, or nothing, and never a second copy of a level on the store that holds it.

The level folder in the workdir stays the checkpoint that resumes and analyses read; the
artifacts are for people browsing runs in the MLflow UI:
- `weights`: `checkpoint/weights.pt` (`{"model": state_dict, "masks": {name: bool tensor}}`,
  loadable with `torch.load(..., weights_only=True)`), `metrics.json` and `spec.json` of the
  level, and `checkpoint/checkpoint.json`, a reference to the committed level (its URI, its key
  under the workdir, the sha256 of its `state.pt`). Where the artifact store is the store that
  holds the level (the same disk, or the same bucket), only the reference is logged.
- `full`: the level folder as it is (`state.pt` with optimizer and RNG state, `metrics.json`,
  `spec.json`), even where that is a second copy on the same disk: asked for explicitly.
- `none`: no artifact.
Every policy tags the level run with the level's URI (`impsweep.checkpoint_uri`).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlflow.tracking import MlflowClient

from trainables import layout
from trainables.layout import LEVEL_METRICS_FILE, LEVEL_STATE_FILE, SPEC_FILE
from trainables.storage import is_object_store, json_bytes, local_folder, open_store, torch_bytes

CHECKPOINT_ARTIFACTS = ("weights", "full", "none")
DEFAULT_CHECKPOINT_ARTIFACTS = "weights"
ARTIFACT_DIR = "checkpoint"
WEIGHTS_FILE = "weights.pt"
REFERENCE_FILE = "checkpoint.json"


def check_policy(policy: str) -> str:
    """`policy`, or ValueError naming the valid ones (it arrives as a plain string in trial configs)."""
    if policy not in CHECKPOINT_ARTIFACTS:
        raise ValueError(f"checkpoint_artifacts: unknown policy {policy!r}; "
                         f"expected one of {list(CHECKPOINT_ARTIFACTS)}")
    return policy


def log_checkpoint(client: MlflowClient, result, *, run_id: str, artifact_uri: str, policy: str) -> None:
    """Log the artifacts `policy` asks for of `result`'s committed level (a
    `trainables.lineage_run.LevelResult`) to the run `run_id`, whose artifacts go to
    `artifact_uri` (the run's `info.artifact_uri`)."""
    if check_policy(policy) == "none":
        return
    if policy == "full":
        with local_folder(result.checkpoint_dir) as folder:
            client.log_artifacts(run_id, str(folder), artifact_path=ARTIFACT_DIR)
        return
    store = open_store(result.checkpoint_dir)
    metrics = store.read_bytes(LEVEL_METRICS_FILE)
    reference = {
        "checkpoint_id": result.checkpoint_id, "uri": result.checkpoint_dir,
        "key": layout.level_dir(result.lineage_id, result.level),  # outlives a move of the workdir
        "state_sha256": json.loads(metrics).get("state_sha256"),
        "load": "trainables.load_checkpoint(uri)",
    }
    files = {REFERENCE_FILE: json_bytes(reference)}
    if not same_store(artifact_uri, result.checkpoint_dir):
        state = store.load_torch(LEVEL_STATE_FILE)
        files[WEIGHTS_FILE] = torch_bytes({"model": state["model"], "masks": state["masks"]})
        files[LEVEL_METRICS_FILE] = metrics
        if store.exists(SPEC_FILE):
            files[SPEC_FILE] = store.read_bytes(SPEC_FILE)
    with tempfile.TemporaryDirectory(prefix="impsweep-") as tmp:
        for name, data in files.items():
            Path(tmp, name).write_bytes(data)
        client.log_artifacts(run_id, tmp, artifact_path=ARTIFACT_DIR)


def same_store(artifact_uri: str, location: str) -> bool:
    """Whether artifacts logged under `artifact_uri` land on the store that holds `location` (a
    local path or an object-store URI): the same local file system (device), or the same bucket.
    A store impsweep cannot see into (an `mlflow-artifacts:` proxy, HTTP, ...) counts as another."""
    parsed = urlparse(artifact_uri)
    if is_object_store(location):
        level = urlparse(location)
        return parsed.scheme == level.scheme and parsed.netloc == level.netloc
    if parsed.scheme == "file":
        path = unquote(parsed.path)
    elif not parsed.scheme or len(parsed.scheme) == 1:  # a plain path (a Windows drive letter too)
        path = artifact_uri
    else:
        return False
    return _device(path) == _device(location)


def _device(path: str | os.PathLike) -> int:
    """The device of `path`, or of its nearest existing parent (an artifact folder is created by
    the first artifact logged to it)."""
    current = Path(path).absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current.stat().st_dev
