"""Activations of every checkpoint's probe layers on a fixed probe set, captured by forward hooks.

Stored once per (probe set, checkpoint, layer) as `.npy` files written atomically, so that an
interrupted or repeated analysis reuses what exists.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainables.checkpoints import atomic_write_bytes, load_checkpoint
from trainables.data import load_dataset, probe_set
from trainables.ids import digest
from trainables.models import build_model

DEFAULT_PROBE_SIZE = 5000


@torch.no_grad()
def capture(model: nn.Module, x: torch.Tensor, layers: tuple[str, ...], *, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """Outputs of `layers` (named_modules paths) for inputs x: [n, ...] -> {layer: [n, ...]} float32."""
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"probe layer {missing[0]!r} is not a module of the model; have {sorted(modules)[:20]}")
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: chunks[name].append(out.detach().float().cpu()))
        for name in layers
    ]
    try:
        model.eval()
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts).numpy() for name, parts in chunks.items()}


def probe_key(spec: dict, probe_size: int, probe_seed: int) -> str:
    """Identity of a probe set: the data it is drawn from, its (resolved) size and seed."""
    return "p" + digest({"dataset": spec["dataset"], "dataset_options": spec.get("dataset_options", {}),
                         "probe_size": probe_size, "probe_seed": probe_seed})


def probe_size_for(model: nn.Module, layers: tuple[str, ...], requested: int | None, example: torch.Tensor) -> int:
    """DESIGN.md's rule: the requested size, else max(5,000, twice the widest probed layer);
    `probe_set` then caps it at the examples the dataset has."""
    if requested is not None:
        return requested
    widths = [int(np.prod(a.shape[1:])) for a in capture(model, example, layers).values()]
    return max(DEFAULT_PROBE_SIZE, 2 * max(widths))


def activation_path(root: Path, checkpoint_id: str, layer: str) -> Path:
    return root / checkpoint_id / f"{layer}.npy"


class ActivationExtractor:
    """Ray Data actor: one checkpoint per row in, one row per (checkpoint, layer) out.

    Datasets and probe sets are loaded once per actor and kept for the rows that follow.
    """

    def __init__(self, acts_root: str, probe_size: int | None, probe_seed: int, device: str = "cpu"):
        self.acts_root, self.probe_size, self.probe_seed = Path(acts_root), probe_size, probe_seed
        self.device = torch.device(device)
        self._probes: dict[str, tuple[torch.Tensor, int]] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("checkpoint_id", "layer", "path", "n_examples", "status")}
        for cid, path, spec_json in zip(batch["checkpoint_id"], batch["checkpoint_path"], batch["spec_json"]):
            for row in self._one(str(cid), str(path), json.loads(spec_json)):
                for key, value in row.items():
                    out[key].append(value)
        return out

    def _one(self, cid: str, path: str, spec: dict) -> list[dict]:
        try:
            model = self._model(spec)
            layers = tuple(model.probe_layers)
            x, size = self._probe(spec, model, layers)
            root = self.acts_root / probe_key(spec, size, self.probe_seed)
            files = {layer: activation_path(root, cid, layer) for layer in layers}
            if not all(f.exists() for f in files.values()):
                model.load_state_dict(load_checkpoint(path, self.device).model)
                for layer, act in capture(model, x, layers).items():
                    buffer = io.BytesIO()
                    np.save(buffer, act)
                    atomic_write_bytes(files[layer], buffer.getvalue())
            return [{"checkpoint_id": cid, "layer": layer, "path": str(f), "n_examples": len(x), "status": "ok"}
                    for layer, f in files.items()]
        except Exception as err:  # one bad checkpoint must not stop the others: report it by id
            return [{"checkpoint_id": cid, "layer": "", "path": "", "n_examples": 0,
                     "status": f"error: {type(err).__name__}: {err}"}]

    def _model(self, spec: dict) -> nn.Module:
        splits = self._splits(spec)
        model = build_model(spec["model"], input_shape=splits.info.input_shape,
                            num_classes=splits.info.num_classes, options=spec.get("model_options"))
        return model.to(self.device)

    def _splits(self, spec: dict):
        return load_dataset(spec["dataset"], options=spec.get("dataset_options"),
                            data_root=spec.get("data_root"), download=False)

    def _probe(self, spec: dict, model: nn.Module, layers: tuple[str, ...]) -> tuple[torch.Tensor, int]:
        """The probe inputs of this model and dataset, and the size requested for them."""
        key = json.dumps([spec["model"], spec.get("model_options"), spec["dataset"], spec.get("dataset_options")],
                         sort_keys=True)
        if key not in self._probes:
            splits = self._splits(spec)
            size = probe_size_for(model, layers, self.probe_size, splits.x_test[:2].to(self.device))
            x, _ = probe_set(splits, size=size, seed=self.probe_seed)
            self._probes[key] = (x.to(self.device), size)
        return self._probes[key]


def acts_root(workdir: str | os.PathLike) -> Path:
    return Path(workdir) / "analysis" / "activations"
