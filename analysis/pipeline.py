"""The analysis stage on Ray Data: catalog → activations → sketches → pair tiles → Parquet.

Incremental and atomic: activations, sketches (`analysis.sketches`) and similarity rows that
exist are reused, each output file appears whole or not at all, and a re-run computes only what
is missing.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from analysis.extract import CheckpointExtractor, products
from analysis.catalog import build_catalog
from analysis.pairs import Rep, Tile, pair_key, pair_set, tiles
from analysis.similarity.inputs import common_size
from analysis.sketches import SketchStore, activation_shape
from analysis.specs import AnalysisSpec, analysis_id
from analysis.tables import similarity_dir, tables_root, to_arrow, update_columns, write_parquet_atomic
from trainables.checkpoints import exclusive_lock, remove_temporaries

SHARPNESS_COLUMNS = ("hessian_top_eig", "perturbed_loss_increase", "sharpness_epsilon")

Echo = Callable[[str], None]


@dataclass(frozen=True)
class AnalysisOutcome:
    analysis_id: str
    n_checkpoints: int
    n_representations: int
    failed_checkpoints: tuple[tuple[str, str], ...]  # (checkpoint_id, reason)
    pairs_total: dict[str, int]  # per measure: the pair set's size
    pairs_computed: dict[str, int]  # per measure: computed by this call
    wall_s: float
    sketches_computed: dict[str, int] = field(default_factory=dict)  # per measure: not found stored


def run_analysis(sweep: str, spec: AnalysisSpec, *, workdir: str | os.PathLike, tracking_uri: str,
                 echo: Echo = print, connect: Callable[[], None] | None = None) -> AnalysisOutcome:
    """Analyse every finished checkpoint of `sweep` (its lineages found in MLflow by tags).

    One analysis of a workdir runs at a time (a file lock; a second waits), and it first
    deletes the hidden temporaries that a killed run's atomic writes left behind, so an
    interrupted run leaves no partial file once the next one starts.

    connect: called before the first Ray Data stage (e.g. to `ray.init`), and only if there is
        something to compute, so that a run with nothing missing starts no Ray at all.
    """
    root = Path(workdir)
    with exclusive_lock(root / "analysis" / ".lock"):
        removed = sum(remove_temporaries(folder) for folder in (root / "analysis", tables_root(root)))
        if removed:
            echo(f"removed {removed} half-written file(s) left by an interrupted analysis")
        return _run_analysis(sweep, spec, workdir=workdir, tracking_uri=tracking_uri, echo=echo,
                             connect=connect)


def _run_analysis(
    sweep: str,
    spec: AnalysisSpec,
    *,
    workdir: str | os.PathLike,
    tracking_uri: str,
    echo: Echo = print,
    connect: Callable[[], None] | None = None,
) -> AnalysisOutcome:
    ray = _LazyRay(connect)
    start = time.perf_counter()
    aid = analysis_id(spec)
    catalog = build_catalog(sweep, tracking_uri=tracking_uri, workdir=workdir)
    echo(f"analysis {aid}: {len(catalog)} checkpoints in sweep {sweep}")
    manifests, failed = _extract(catalog, spec, Path(workdir), echo, ray)
    reps = _reps(catalog, manifests)
    pairs = pair_set(reps, layers=spec.layers, scope=spec.scope)
    total, computed, sketched = {}, {}, {}
    for measure in spec.measures:
        done = _existing_keys(workdir, measure, aid)
        todo = [p for p in pairs if pair_key(*p) not in done]
        total[measure] = len(pairs)
        computed[measure], sketched[measure], loaded = (
            _similarity(todo, pairs, measure, spec, aid, Path(workdir), ray) if todo else (0, 0, 0))
        echo(f"analysis {aid}: {measure}: {len(pairs)} pairs, {len(pairs) - len(todo)} already computed, "
             f"{computed[measure]} new; sketches: {sketched[measure]} computed, {loaded} read from disk")
    return AnalysisOutcome(aid, len(catalog), len(reps), tuple(failed), total, computed,
                           time.perf_counter() - start, sketched)


class _LazyRay:
    """The `ray` module, connected (and Ray Data quietened) on first attribute access."""

    def __init__(self, connect: Callable[[], None] | None):
        self._connect, self._module = connect, None

    def __getattr__(self, name: str):
        if self._module is None:
            import ray

            if self._connect is not None:
                self._connect()
            _quiet_ray_data(ray)
            self._module = ray
        return getattr(self._module, name)


def _quiet_ray_data(ray) -> None:
    """Our own progress lines say what the stage does; Ray Data's per-operator logs drown them."""
    import logging

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _extract(catalog: pl.DataFrame, spec: AnalysisSpec, workdir: Path, echo: Echo, ray):
    """Per-checkpoint products (activations, neurons, receptive fields, sharpness), computing in
    a Ray Data actor pool only the checkpoints that miss one."""
    missing = [
        {k: row[k] for k in ("checkpoint_id", "checkpoint_path", "spec_json")}
        for row in catalog.iter_rows(named=True)
        if products(workdir, spec, row["checkpoint_id"]).missing(spec)
    ]
    failed: list[tuple[str, str]] = []
    if missing:
        echo(f"checkpoints: {len(catalog) - len(missing)} cached, extracting {len(missing)}")
        ds = ray.data.from_items(missing).map_batches(
            CheckpointExtractor,
            fn_constructor_kwargs={"workdir": str(workdir), "spec_json": spec.model_dump_json()},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=min(spec.num_actors, len(missing))),
            batch_size=1,
            num_cpus=1,
        )
        for row in sorted(ds.iter_rows(), key=lambda r: r["checkpoint_id"]):
            if row["status"] != "ok":
                failed.append((row["checkpoint_id"], row["status"]))
                echo(f"checkpoint {row['checkpoint_id']} skipped: {row['status']}")
    else:
        echo(f"checkpoints: all {len(catalog)} cached")
    manifests, sharp = {}, []
    for cid in catalog["checkpoint_id"]:
        found = products(workdir, spec, cid)
        if found.manifest.exists():
            manifests[cid] = json.loads(found.manifest.read_text())
        if found.sharpness.exists():
            values = json.loads(found.sharpness.read_text())
            sharp.append({"checkpoint_id": cid, **{k: values[k] for k in SHARPNESS_COLUMNS}})
    update_columns(workdir, "levels", "checkpoint_id", sharp)
    return manifests, failed


def _reps(catalog: pl.DataFrame, manifests: dict[str, list[dict]]) -> list[Rep]:
    reps = []
    for row in catalog.iter_rows(named=True):
        spec = json.loads(row["spec_json"])
        group = json.dumps([spec["model"], spec.get("model_options"), spec["dataset"],
                            spec.get("dataset_options")], sort_keys=True)
        for layer_row in manifests.get(row["checkpoint_id"], []):
            reps.append(Rep(row["checkpoint_id"], layer_row["layer"], row["lineage_id"], row["config_id"],
                            row["level"], group, layer_row["path"]))
    return reps


def _existing_keys(workdir: str | os.PathLike, measure: str, aid: str) -> set[tuple[str, str, str, str]]:
    folder = similarity_dir(workdir, measure)
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return set()
    frame = (
        pl.scan_parquet(folder / "*.parquet")
        .filter(pl.col("analysis_id") == aid)
        .select("a_checkpoint_id", "a_layer", "b_checkpoint_id", "b_layer")
        .collect()
    )
    return set(frame.iter_rows())


def _similarity(todo, pairs, measure: str, spec: AnalysisSpec, aid: str, workdir: Path, ray) -> tuple[int, int, int]:
    """Evaluate the missing pairs tile by tile in a Ray Data actor; each tile writes one file.
    Returns (rows written, sketches computed, sketches read from disk)."""
    plans = _layer_pair_plans(pairs, measure, spec)
    items = [{"tile": json.dumps({**_tile_to_json(t), **plans[(t.a[0].group, t.a[0].layer, t.b[0].layer)]})}
             for t in tiles(todo, spec.tile_size)]
    ds = ray.data.from_items(items).map_batches(
        _TileWriter,
        fn_constructor_kwargs={"measure": measure, "spec_json": spec.model_dump_json(), "aid": aid,
                               "workdir": str(workdir)},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1),
        batch_size=1,
        num_cpus=1,
    )
    counts = np.array([[row["rows"], row["computed"], row["loaded"]] for row in ds.iter_rows()]).reshape(-1, 3)
    return tuple(int(c) for c in counts.sum(axis=0))


def _layer_pair_plans(pairs, measure: str, spec: AnalysisSpec) -> dict[tuple[str, str, str], dict]:
    """Per (group, a_layer, b_layer): the activation shapes of each side and the CKA form, decided
    on the layer pair's whole pair set (not only what is missing), so that a resumed or grown
    analysis picks the sketches it stored before."""
    from analysis.similarity import MEASURES, cka_form

    members: dict[tuple[str, str, str], list] = {}
    for a, b in pairs:
        members.setdefault((a.group, a.layer, b.layer), []).append((a, b))
    shapes: dict[tuple[str, str], tuple[int, ...]] = {}
    max_rows = spec.options.get(measure, {}).get("max_rows")
    plans = {}
    for (group, a_layer, b_layer), layer_pairs in members.items():
        for rep in (layer_pairs[0][0], layer_pairs[0][1]):
            if (group, rep.layer) not in shapes:
                shapes[(group, rep.layer)] = activation_shape(rep.path)
        a_shape, b_shape = shapes[(group, a_layer)], shapes[(group, b_layer)]
        reps = {a for a, _ in layer_pairs} | {b for _, b in layer_pairs}
        rep_shapes = [a_shape if r.layer == a_layer else b_shape for r in sorted(reps)]
        form = (cka_form(measure, rep_shapes, pairs=len(layer_pairs), conv=spec.conv, max_rows=max_rows)
                if MEASURES[measure].family == "cka" else None)
        plans[(group, a_layer, b_layer)] = {"a_shape": list(a_shape), "b_shape": list(b_shape), "form": form}
    return plans


def _tile_to_json(tile: Tile) -> dict:
    return {"a": [r.__dict__ for r in tile.a], "b": [r.__dict__ for r in tile.b], "pairs": tile.pairs}


class _TileWriter:
    """Ray Data actor: a tile's pairs from the sketches of its representations (stored, kept in
    memory from earlier tiles, or computed once), evaluated block by block; writes its file."""

    def __init__(self, measure: str, spec_json: str, aid: str, workdir: str):
        self.measure, self.aid, self.workdir = measure, aid, Path(workdir)
        self.spec = AnalysisSpec.model_validate_json(spec_json)
        self.store = SketchStore(self.workdir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"rows": [], "computed": [], "loaded": []}
        for t in batch["tile"]:
            computed, loaded = self.store.computed, self.store.loaded
            out["rows"].append(self._tile(json.loads(str(t))))
            out["computed"].append(self.store.computed - computed)
            out["loaded"].append(self.store.loaded - loaded)
        return out

    def _tile(self, data: dict) -> int:
        from analysis.similarity import pairwise_sketches, resolve_conv, sketch_spec

        a = tuple(Rep(**r) for r in data["a"])
        b = tuple(Rep(**r) for r in data["b"])
        tile = Tile(a, b, tuple(tuple(p) for p in data["pairs"]))
        options = self.spec.options.get(self.measure, {})
        mode = resolve_conv(self.measure, self.spec.conv)
        a_shape, b_shape = tuple(data["a_shape"]), tuple(data["b_shape"])
        target = _common_size(a_shape, b_shape) if mode == "spatial" else None
        same = a == b
        specs = [sketch_spec(self.measure, shape, conv=mode, target=target, form=data["form"], **options)
                 for shape in (a_shape, b_shape)]
        rows = self._prepared(a, specs[0], a_shape)
        cols = rows if same else self._prepared(b, specs[1], b_shape)
        result = pairwise_sketches([r.sketch for r in rows], None if same else [c.sketch for c in cols],
                                   measure=self.measure, conv=mode, pairs=tile.pairs, **options)
        conv_mode = mode if len(a_shape) == 4 else "none"
        out = []
        for i, j in tile.pairs:
            value = float(result.values[i, j])
            out.append({
                "analysis_id": self.aid,
                "a_checkpoint_id": a[i].checkpoint_id, "a_lineage_id": a[i].lineage_id, "a_level": a[i].level,
                "a_layer": a[i].layer,
                "b_checkpoint_id": b[j].checkpoint_id, "b_lineage_id": b[j].lineage_id, "b_level": b[j].level,
                "b_layer": b[j].layer,
                "value": None if np.isnan(value) else value, "n_examples": int(a_shape[0]),
                # The CCA family reports the ranks it used; for the others the effective
                # dimension is the number of units that vary over the probe set.
                "a_dim": _dim(result.a_dim[i, j], rows[i].live_units),
                "b_dim": _dim(result.b_dim[i, j], cols[j].live_units),
                "conv_mode": conv_mode,
                "options": json.dumps(options, sort_keys=True), "status": str(result.status[i, j]),
            })
        path = similarity_dir(self.workdir, self.measure) / f"part-{self.aid}-{tile.tile_id}.parquet"
        write_parquet_atomic(to_arrow(out, "similarity"), path)
        return len(out)

    def _prepared(self, reps: tuple[Rep, ...], spec, shape: tuple[int, ...]) -> list:
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
