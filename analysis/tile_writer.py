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
from analysis.sketch_store import Prepared, SketchStore, UnusableActivation, activation_shape
from analysis.specs import AnalysisSpec
from analysis.tables import to_arrow, write_table
from trainables import layout
from trainables.storage import Store, as_store

LayerPair = tuple[str, str, str]  # (group, a_layer, b_layer)


@dataclass(frozen=True)
class LayerPairPlan:
    """What every tile of one layer pair shares: the activation shape of each side ([n, p] or
    [n, c, h, w]; None when no activation of that layer can be read) and, for linear CKA, the
    sketch form ("gram" or "features"; None otherwise)."""

    a_shape: tuple[int, ...] | None
    b_shape: tuple[int, ...] | None
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
        shapes = [None if plan[side] is None else tuple(plan[side]) for side in ("a_shape", "b_shape")]
        return cls(tile, LayerPairPlan(*shapes, plan["form"]))


@dataclass(frozen=True)
class Skipped:
    """A representation whose pairs got no value: its activation file is `reason` ("unreadable",
    "nonfinite", "bad_shape"), with what was found."""

    checkpoint_id: str
    layer: str
    reason: str
    detail: str


def tile_jobs(todo: Sequence[tuple[Rep, Rep]], pairs: Sequence[tuple[Rep, Rep]], *, measure: str,
              spec: AnalysisSpec, workdir: str | os.PathLike | Store) -> list[TileJob]:
    """The tiles of the pairs `todo` (those missing of the analysis's whole pair set `pairs`),
    each with its layer pair's plan (see `layer_pair_plans`)."""
    plans = layer_pair_plans(pairs, measure=measure, spec=spec, workdir=workdir)
    return [TileJob(t, plans[(t.a[0].group, t.a[0].layer, t.b[0].layer)]) for t in tiles(todo, spec.tile_size)]


def layer_pair_plans(pairs: Sequence[tuple[Rep, Rep]], *, measure: str, spec: AnalysisSpec,
                     workdir: str | os.PathLike | Store) -> dict[LayerPair, LayerPairPlan]:
    """The plan of each layer pair, decided on the layer pair's whole pair set (not only what
    is missing), so that a resumed or grown analysis picks the sketches it stored before. A
    layer's shape is that of its first readable activation file."""
    store = as_store(workdir)
    members: dict[LayerPair, list[tuple[Rep, Rep]]] = {}
    for a, b in pairs:
        members.setdefault((a.group, a.layer, b.layer), []).append((a, b))
    shapes: dict[tuple[str, str], tuple[int, ...] | None] = {}
    max_rows = spec.options.get(measure, {}).get("max_rows")
    plans = {}
    for (group, a_layer, b_layer), layer_pairs in members.items():
        reps = sorted({a for a, _ in layer_pairs} | {b for _, b in layer_pairs})
        for layer in (a_layer, b_layer):
            if (group, layer) not in shapes:
                shapes[(group, layer)] = _first_shape([r for r in reps if r.layer == layer], store)
        a_shape, b_shape = shapes[(group, a_layer)], shapes[(group, b_layer)]
        form = None
        if MEASURES[measure].family == "cka" and a_shape is not None and b_shape is not None:
            rep_shapes = [a_shape if r.layer == a_layer else b_shape for r in reps]
            form = cka_form(measure, rep_shapes, pairs=len(layer_pairs), conv=spec.conv, max_rows=max_rows)
        plans[(group, a_layer, b_layer)] = LayerPairPlan(a_shape, b_shape, form)
    return plans


def _first_shape(reps: Sequence[Rep], store: Store) -> tuple[int, ...] | None:
    for rep in reps:
        try:
            return activation_shape(store, key=rep.path)
        except UnusableActivation:
            continue
    return None


class TileWriter:
    """Ray Data actor: per `TileJob`, the tile's pairs from the sketches of its representations
    (stored, kept in memory from earlier tiles, or computed once), evaluated block by block, as
    one Parquet file of the similarity table. A representation whose activation file is
    unusable (`Skipped`) gives its pairs a null value and the reason as status; the rest of the
    tile is computed as usual."""

    def __init__(self, measure: str, *, spec_json: str, analysis_id: str, workdir: str | os.PathLike | Store):
        self.measure, self.analysis_id = measure, analysis_id
        self.spec = AnalysisSpec.model_validate_json(spec_json)
        self.sketches = SketchStore(workdir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """batch["job"]: `TileJob.to_json()` strings. Per job: rows written, sketches computed,
        sketches read from disk, and the skipped representations (JSON list of `Skipped`)."""
        out: dict[str, list] = {"rows": [], "computed": [], "loaded": [], "skipped": []}
        for text in batch["job"]:
            computed, loaded = self.sketches.computed, self.sketches.loaded
            rows, skipped = self.write(TileJob.from_json(str(text)))
            out["rows"].append(rows)
            out["computed"].append(self.sketches.computed - computed)
            out["loaded"].append(self.sketches.loaded - loaded)
            out["skipped"].append(json.dumps([asdict(s) for s in skipped]))
        return out

    def write(self, job: TileJob) -> tuple[int, list[Skipped]]:
        """Write the rows of `job`'s pairs; returns how many, and the representations skipped."""
        tile, plan = job.tile, job.plan
        options = self.spec.options.get(self.measure, {})
        mode = resolve_conv(self.measure, self.spec.conv)
        rows = self._prepared(tile.a, plan.a_shape, plan, mode=mode, options=options)
        cols = rows if tile.a == tile.b else self._prepared(tile.b, plan.b_shape, plan, mode=mode, options=options)
        values = self._values(rows, cols, tile, mode=mode, options=options)
        conv_mode = mode if plan.a_shape is not None and len(plan.a_shape) == 4 else "none"
        n_examples = next((shape[0] for shape in (plan.a_shape, plan.b_shape) if shape is not None), 0)
        out = []
        for i, j in tile.pairs:
            a, b, row, col = tile.a[i], tile.b[j], rows[i], cols[j]
            value, status, a_dim, b_dim = values[(i, j)] if (i, j) in values else (None, _reason(row, col), -1, -1)
            out.append({
                "analysis_id": self.analysis_id,
                "a_checkpoint_id": a.checkpoint_id, "a_lineage_id": a.lineage_id, "a_level": a.level,
                "a_layer": a.layer,
                "b_checkpoint_id": b.checkpoint_id, "b_lineage_id": b.lineage_id, "b_level": b.level,
                "b_layer": b.layer,
                "value": value, "n_examples": int(n_examples),
                # The CCA family reports the ranks it used; for the others the effective
                # dimension is the number of units that vary over the probe set.
                "a_dim": _dim(a_dim, row), "b_dim": _dim(b_dim, col),
                "conv_mode": conv_mode,
                "options": json.dumps(options, sort_keys=True), "status": status,
            })
        path = layout.similarity_file(self.measure, analysis_id=self.analysis_id, tile_id=tile.tile_id)
        write_table(self.sketches.store, path, table=to_arrow(out, "similarity"))
        skipped = {(s.checkpoint_id, s.layer): s for s in (*rows, *cols) if isinstance(s, Skipped)}
        return len(out), list(skipped.values())

    def _values(self, rows: list[Prepared | Skipped], cols: list[Prepared | Skipped], tile: Tile, *, mode: str,
                options: dict) -> dict[tuple[int, int], tuple[float | None, str, int, int]]:
        """(value, status, a_dim, b_dim) of every pair of the tile whose two sketches exist,
        evaluated in one call over those sketches."""
        same = tile.a == tile.b
        good_rows = [i for i, p in enumerate(rows) if isinstance(p, Prepared)]
        good_cols = good_rows if same else [j for j, p in enumerate(cols) if isinstance(p, Prepared)]
        at_row, at_col = {i: k for k, i in enumerate(good_rows)}, {j: k for k, j in enumerate(good_cols)}
        asked = [(i, j) for i, j in tile.pairs if i in at_row and j in at_col]
        if not asked:
            return {}
        result = pairwise_sketches([rows[i].sketch for i in good_rows],
                                   None if same else [cols[j].sketch for j in good_cols],
                                   measure=self.measure, conv=mode,
                                   pairs=[(at_row[i], at_col[j]) for i, j in asked], **options)
        out = {}
        for i, j in asked:
            r, c = at_row[i], at_col[j]
            value = float(result.values[r, c])
            out[(i, j)] = (None if np.isnan(value) else value, str(result.status[r, c]),
                           int(result.a_dim[r, c]), int(result.b_dim[r, c]))
        return out

    def _prepared(self, reps: tuple[Rep, ...], shape: tuple[int, ...] | None, plan: LayerPairPlan, *,
                  mode: str, options: dict) -> list[Prepared | Skipped]:
        """Each representation's sketch, or why there is none."""
        if shape is None:
            return [Skipped(r.checkpoint_id, r.layer, "unreadable", "no activation of this layer can be read")
                    for r in reps]
        target = (_common_size(plan.a_shape, plan.b_shape)
                  if mode == "spatial" and plan.a_shape is not None and plan.b_shape is not None else None)
        spec = sketch_spec(self.measure, shape, conv=mode, target=target, form=plan.form, **options)
        out: list[Prepared | Skipped] = []
        for rep in reps:
            try:
                prepared = self.sketches.get(rep.path, spec)
            except UnusableActivation as error:
                out.append(Skipped(rep.checkpoint_id, rep.layer, error.reason, str(error)))
                continue
            if prepared.shape != shape:
                out.append(Skipped(rep.checkpoint_id, rep.layer, "bad_shape",
                                   f"shape {prepared.shape}; the layer's activations are {shape}"))
                continue
            out.append(prepared)
        return out


def _common_size(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> tuple[int, int]:
    """The spatial size both sides are pooled to in `spatial` mode (2-D layers count as 1 x 1)."""
    a = a_shape[2:] if len(a_shape) == 4 else (1, 1)
    b = b_shape[2:] if len(b_shape) == 4 else (1, 1)
    return common_size(tuple(a), tuple(b))


def _reason(row: Prepared | Skipped, col: Prepared | Skipped) -> str:
    """The status of a pair one of whose representations was skipped."""
    return row.reason if isinstance(row, Skipped) else col.reason


def _dim(reported: int, rep: Prepared | Skipped) -> int:
    if reported >= 0:
        return int(reported)
    return rep.live_units if isinstance(rep, Prepared) else 0
