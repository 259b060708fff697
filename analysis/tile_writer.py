"""The similarity rows of one tile of pairs: each representation's sketch from the sketch store,
one batched evaluation of the tile's pairs, one Parquet file. `TileWriter` runs as a Ray Data
actor; the driver sends it `TileJob`s as JSON.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from analysis.pairs import Rep, Tile, tiles
from analysis.similarity import MEASURES, cka_form, pairwise_sketches, resolve_conv, sketch_spec
from analysis.similarity.inputs import common_size
from analysis.sketch_store import Prepared, SketchStore, activation_shape
from analysis.specs import AnalysisSpec
from analysis.tables import to_arrow, write_parquet_atomic
from trainables.layout import Layout

LayerPair = tuple[str, str, str]  # (group, a_layer, b_layer)


@dataclass(frozen=True)
class LayerPairPlan:
    """What every tile of one layer pair shares: the activation shape of each side ([n, p] or
    [n, c, h, w]) and, for linear CKA, the sketch form ("gram" or "features"; None otherwise)."""

    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    form: str | None


@dataclass(frozen=True)
class TileJob:
    """One tile of pairs and its layer pair's plan: what a `TileWriter` needs to write its rows."""

    tile: Tile
    plan: LayerPairPlan

    def to_json(self) -> str:
        return json.dumps({"a": [asdict(r) for r in self.tile.a], "b": [asdict(r) for r in self.tile.b],
                           "pairs": self.tile.pairs, "plan": asdict(self.plan)})

    @classmethod
    def from_json(cls, text: str) -> TileJob:
        data = json.loads(text)
        tile = Tile(tuple(Rep(**r) for r in data["a"]), tuple(Rep(**r) for r in data["b"]),
                    tuple(tuple(p) for p in data["pairs"]))
        plan = data["plan"]
        return cls(tile, LayerPairPlan(tuple(plan["a_shape"]), tuple(plan["b_shape"]), plan["form"]))


def tile_jobs(todo: Sequence[tuple[Rep, Rep]], pairs: Sequence[tuple[Rep, Rep]], *, measure: str,
              spec: AnalysisSpec) -> list[TileJob]:
    """The tiles of the pairs `todo` (those missing of the analysis's whole pair set `pairs`),
    each with its layer pair's plan (see `layer_pair_plans`)."""
    plans = layer_pair_plans(pairs, measure=measure, spec=spec)
    return [TileJob(t, plans[(t.a[0].group, t.a[0].layer, t.b[0].layer)]) for t in tiles(todo, spec.tile_size)]


def layer_pair_plans(pairs: Sequence[tuple[Rep, Rep]], *, measure: str, spec: AnalysisSpec
                     ) -> dict[LayerPair, LayerPairPlan]:
    """The plan of each layer pair, decided on the layer pair's whole pair set (not only what
    is missing), so that a resumed or grown analysis picks the sketches it stored before."""
    members: dict[LayerPair, list[tuple[Rep, Rep]]] = {}
    for a, b in pairs:
        members.setdefault((a.group, a.layer, b.layer), []).append((a, b))
    shapes: dict[tuple[str, str], tuple[int, ...]] = {}
    max_rows = spec.options.get(measure, {}).get("max_rows")
    plans = {}
    for (group, a_layer, b_layer), layer_pairs in members.items():
        for rep in layer_pairs[0]:
            if (group, rep.layer) not in shapes:
                shapes[(group, rep.layer)] = activation_shape(rep.path)
        a_shape, b_shape = shapes[(group, a_layer)], shapes[(group, b_layer)]
        reps = {a for a, _ in layer_pairs} | {b for _, b in layer_pairs}
        rep_shapes = [a_shape if r.layer == a_layer else b_shape for r in sorted(reps)]
        form = (cka_form(measure, rep_shapes, pairs=len(layer_pairs), conv=spec.conv, max_rows=max_rows)
                if MEASURES[measure].family == "cka" else None)
        plans[(group, a_layer, b_layer)] = LayerPairPlan(a_shape, b_shape, form)
    return plans


class TileWriter:
    """Ray Data actor: per `TileJob`, the tile's pairs from the sketches of its representations
    (stored, kept in memory from earlier tiles, or computed once), evaluated block by block, as
    one Parquet file of the similarity table."""

    def __init__(self, measure: str, *, spec_json: str, analysis_id: str, workdir: str | os.PathLike):
        self.measure, self.analysis_id, self.layout = measure, analysis_id, Layout(workdir)
        self.spec = AnalysisSpec.model_validate_json(spec_json)
        self.store = SketchStore(workdir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """batch["job"]: `TileJob.to_json()` strings. Per job: rows written, sketches computed,
        sketches read from disk."""
        out: dict[str, list] = {"rows": [], "computed": [], "loaded": []}
        for text in batch["job"]:
            computed, loaded = self.store.computed, self.store.loaded
            out["rows"].append(self.write(TileJob.from_json(str(text))))
            out["computed"].append(self.store.computed - computed)
            out["loaded"].append(self.store.loaded - loaded)
        return out

    def write(self, job: TileJob) -> int:
        """Write the rows of `job`'s pairs; returns how many."""
        tile, plan = job.tile, job.plan
        options = self.spec.options.get(self.measure, {})
        mode = resolve_conv(self.measure, self.spec.conv)
        target = _common_size(plan.a_shape, plan.b_shape) if mode == "spatial" else None
        same = tile.a == tile.b
        specs = [sketch_spec(self.measure, shape, conv=mode, target=target, form=plan.form, **options)
                 for shape in (plan.a_shape, plan.b_shape)]
        rows = self._prepared(tile.a, specs[0], plan.a_shape)
        cols = rows if same else self._prepared(tile.b, specs[1], plan.b_shape)
        result = pairwise_sketches([r.sketch for r in rows], None if same else [c.sketch for c in cols],
                                   measure=self.measure, conv=mode, pairs=tile.pairs, **options)
        conv_mode = mode if len(plan.a_shape) == 4 else "none"
        out = []
        for i, j in tile.pairs:
            a, b = tile.a[i], tile.b[j]
            value = float(result.values[i, j])
            out.append({
                "analysis_id": self.analysis_id,
                "a_checkpoint_id": a.checkpoint_id, "a_lineage_id": a.lineage_id, "a_level": a.level,
                "a_layer": a.layer,
                "b_checkpoint_id": b.checkpoint_id, "b_lineage_id": b.lineage_id, "b_level": b.level,
                "b_layer": b.layer,
                "value": None if np.isnan(value) else value, "n_examples": int(plan.a_shape[0]),
                # The CCA family reports the ranks it used; for the others the effective
                # dimension is the number of units that vary over the probe set.
                "a_dim": _dim(result.a_dim[i, j], rows[i].live_units),
                "b_dim": _dim(result.b_dim[i, j], cols[j].live_units),
                "conv_mode": conv_mode,
                "options": json.dumps(options, sort_keys=True), "status": str(result.status[i, j]),
            })
        path = self.layout.similarity_file(self.measure, analysis_id=self.analysis_id, tile_id=tile.tile_id)
        write_parquet_atomic(to_arrow(out, "similarity"), path)
        return len(out)

    def _prepared(self, reps: tuple[Rep, ...], spec, shape: tuple[int, ...]) -> list[Prepared]:
        prepared = [self.store.get(r.path, spec) for r in reps]
        for rep, p in zip(reps, prepared):
            if p.shape != shape:
                raise ValueError(f"activation of {rep.checkpoint_id} {rep.layer} has shape {p.shape}; "
                                 f"expected {shape} like the rest of its layer")
        return prepared


def _common_size(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> tuple[int, int]:
    """The spatial size both sides are pooled to in `spatial` mode (2-D layers count as 1 x 1)."""
    a = a_shape[2:] if len(a_shape) == 4 else (1, 1)
    b = b_shape[2:] if len(b_shape) == 4 else (1, 1)
    return common_size(tuple(a), tuple(b))


def _dim(reported: int, live: int) -> int:
    return int(reported) if reported >= 0 else live
