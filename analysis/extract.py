"""Everything measured on one checkpoint at a time: activations of its probe layers, the
PSP-entropy of their units, the receptive fields of a fully connected first layer, and the
sharpness of its minimum. Run as a Ray Data actor; each product is a file written atomically,
and a product that exists is not computed again.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
import torch
from torch import nn

from analysis.activations import capture, probe_key, probe_size_for
from analysis.specs import AnalysisSpec
from analysis.tables import to_arrow, write_table
from trainables import layout
from trainables.checkpoints import LineageCheckpoints
from trainables.data import load_dataset, probe_set
from trainables.ids import digest, parse_checkpoint_id
from trainables.models import build_model
from trainables.storage import LocalStore, Store, as_store


@dataclass(frozen=True)
class Products:
    """Where (keys in `store`) the products of one checkpoint live (their existence says they are
    done; for the activations, a manifest that `read_manifest` can use)."""

    store: Store
    manifest: str  # activation files of every probe layer (JSON rows)
    neurons: str
    receptive_fields: str
    displacements: str
    sharpness: str  # JSON, merged into the levels table

    def missing(self, spec: AnalysisSpec, fully_connected: bool | None = None) -> list[str]:
        want = {"manifest": True, "neurons": spec.neurons, "sharpness": spec.sharpness,
                "receptive_fields": spec.receptive_fields and fully_connected is not False}
        return [name for name, on in want.items() if on and not self._done(name)]

    def _done(self, name: str) -> bool:
        if name == "manifest":
            return read_manifest(self.store, key=self.manifest) is not None
        return self.store.exists(getattr(self, name))


def read_manifest(store: Store, *, key: str) -> list[dict] | None:
    """The rows of a checkpoint's activation manifest, each file's `path` a key of the workdir;
    None when there is no usable manifest: none yet, or one of a copied or moved workdir written
    when manifests stored absolute paths, which point outside this workdir (its activations are
    then extracted again, here)."""
    if not store.exists(key):
        return None
    rows = []
    for row in store.read_json(key):
        if PurePath(row["path"]).is_absolute():
            if not isinstance(store, LocalStore):
                return None
            try:
                row = {**row, "path": store.key_of(row["path"])}
            except ValueError:
                return None
        rows.append(row)
    return rows


def products(workdir: str | os.PathLike | Store, *, spec: AnalysisSpec, checkpoint_id: str) -> Products:
    """Where `spec`'s products of checkpoint `checkpoint_id` are stored under `workdir`."""
    probe_rule = digest({"probe_size": spec.probe_size, "probe_seed": spec.probe_seed})
    sharpness_rule = digest({"batch": spec.sharpness_batch, "epsilon": spec.sharpness_epsilon,
                             "iterations": spec.sharpness_iterations, "seed": spec.probe_seed})
    return Products(
        store=as_store(workdir),
        manifest=layout.activation_index(probe_rule, checkpoint_id),
        neurons=layout.checkpoint_table_file("neurons", checkpoint_id),
        receptive_fields=layout.checkpoint_table_file("receptive_fields", checkpoint_id),
        displacements=layout.checkpoint_table_file("displacements", checkpoint_id),
        sharpness=layout.sharpness_file(sharpness_rule, checkpoint_id),
    )


class CheckpointExtractor:
    """Ray Data actor: one checkpoint per row in, one status row out per checkpoint.

    Datasets and probe sets are loaded once per actor and kept for the rows that follow.
    """

    def __init__(self, workdir: str, *, spec_json: str, device: str = "cpu"):
        self.store, self.spec = as_store(workdir), AnalysisSpec.model_validate_json(spec_json)
        self.device = torch.device(device)
        self._probes: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"checkpoint_id": [], "status": []}
        for cid, spec_json in zip(batch["checkpoint_id"], batch["spec_json"]):
            out["checkpoint_id"].append(str(cid))
            out["status"].append(self._one(str(cid), json.loads(spec_json)))
        return out

    def _one(self, cid: str, lineage_spec: dict) -> str:
        try:
            splits = load_dataset(lineage_spec["dataset"], options=lineage_spec.get("dataset_options"),
                                  data_root=lineage_spec.get("data_root"), download=False)
            model = build_model(lineage_spec["model"], input_shape=splits.info.input_shape,
                                num_classes=splits.info.num_classes,
                                options=lineage_spec.get("model_options")).to(self.device)
            target = products(self.store, spec=self.spec, checkpoint_id=cid)
            fully_connected = isinstance(_first_weight_module(model), nn.Linear)
            todo = target.missing(self.spec, fully_connected)
            if not todo:
                return "ok"
            lineage, level = parse_checkpoint_id(cid)
            stored = LineageCheckpoints(self.store, lineage).load_level(level, self.device)
            model.load_state_dict(stored.model)
            x, y, size = self._probe(lineage_spec, model, splits)
            if "manifest" in todo:
                self._activations(cid, lineage_spec, model, x, size, target.manifest)
            if "neurons" in todo:
                self._neurons(cid, model, x, y, splits.info.num_classes, target.neurons)
            if "receptive_fields" in todo:
                self._receptive_fields(cid, model, stored.masks, splits.info.input_shape, target)
            if "sharpness" in todo:
                self._sharpness(model, stored.masks, splits, target.sharpness)
            return "ok"
        except Exception as err:  # one bad checkpoint must not stop the others: report it by id
            return f"error: {type(err).__name__}: {err}"

    def _probe(self, lineage_spec: dict, model: nn.Module, splits) -> tuple[torch.Tensor, torch.Tensor, int]:
        key = json.dumps([lineage_spec["model"], lineage_spec.get("model_options"), lineage_spec["dataset"],
                          lineage_spec.get("dataset_options")], sort_keys=True)
        if key not in self._probes:
            size = probe_size_for(model, layers=tuple(model.probe_layers), requested=self.spec.probe_size,
                                  example=splits.x_test[:2].to(self.device))
            x, y = probe_set(splits, size=size, seed=self.spec.probe_seed)
            self._probes[key] = (x.to(self.device), y.to(self.device), size)
        return self._probes[key]

    def _activations(self, cid: str, lineage_spec: dict, model: nn.Module, x: torch.Tensor, size: int,
                     manifest: str) -> None:
        key = probe_key(lineage_spec, size=size, seed=self.spec.probe_seed)
        rows = []
        for layer, act in capture(model, x, layers=tuple(model.probe_layers)).items():
            file = layout.activation_file(key, cid, layer=layer)
            buffer = io.BytesIO()
            np.save(buffer, act)
            self.store.write_bytes(file, buffer.getvalue())
            rows.append({"checkpoint_id": cid, "layer": layer, "path": file, "n_examples": len(x)})
        self.store.write_json(manifest, rows)  # last: its existence means every layer file is there

    def _neurons(self, cid: str, model: nn.Module, x, y, num_classes: int, out: str) -> None:
        from analysis.neurons import neuron_rows, psp_entropy

        rows = neuron_rows(cid, psp_entropy(model, x, y=y, num_classes=num_classes))
        write_table(self.store, out, table=to_arrow(rows, "neurons"))

    def _receptive_fields(self, cid: str, model: nn.Module, masks, input_shape, target: Products) -> None:
        from analysis.receptive_fields import first_layer_mask, receptive_field_rows, receptive_fields

        layer, mask = first_layer_mask(model, masks)
        generator = torch.Generator().manual_seed(self.spec.probe_seed)
        rf = receptive_fields(mask, tuple(input_shape), generator=generator, layer=layer)
        centres = (rf.bins[:-1] + rf.bins[1:]) / 2
        hist = [{"checkpoint_id": cid, "layer": layer, "distance": float(d), "same_channel": int(s),
                 "cross_channel": int(c)}
                for d, s, c in zip(centres, rf.displacement_same_channel, rf.displacement_cross_channel)]
        write_table(self.store, target.displacements, table=to_arrow(hist, "displacements"))
        write_table(self.store, target.receptive_fields,
                    table=to_arrow(receptive_field_rows(cid, rf), "receptive_fields"))

    def _sharpness(self, model: nn.Module, masks, splits, out: str) -> None:
        from analysis.sharpness import sharpness

        n = min(self.spec.sharpness_batch, len(splits.x_train))
        chosen = torch.randperm(len(splits.x_train), generator=torch.Generator().manual_seed(self.spec.probe_seed))[:n]
        x = splits.x_train[chosen].to(self.device)
        y = splits.y_train[chosen].to(self.device)
        result = sharpness(model, masks, x=x, y=y, epsilon=self.spec.sharpness_epsilon,
                           n_iterations=self.spec.sharpness_iterations, seed=self.spec.probe_seed)
        self.store.write_json(out, {"hessian_top_eig": result.hessian_top_eig,
                                    "perturbed_loss_increase": result.perturbed_loss_increase,
                                    "sharpness_epsilon": result.epsilon, "batch": n,
                                    "n_iterations": result.n_iterations, "loss": result.loss})


def _first_weight_module(model: nn.Module) -> nn.Module | None:
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            return module
    return None
