"""The analysis stage on Ray Data: catalog → activations → sketches → pair tiles → Parquet.

Incremental and atomic: activations, sketches (`analysis.sketch_store`) and similarity rows
(`analysis.tile_writer`) that exist are reused, each output file appears whole or not at all, and
a re-run computes only what is missing, after repairing what it finds damaged (`analysis.repair`).
A representation whose activation file is unusable gives its pairs null values with the reason.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from analysis.catalog import build_catalog
from analysis.extract import CheckpointExtractor, products, read_manifest
from analysis.pairs import Rep, pair_key, pair_set
from analysis.repair import retry_unreadable, set_aside_garbled_tables
from analysis.specs import AnalysisSpec, analysis_id
from analysis.tables import update_columns
from analysis.tile_writer import TileWriter, tile_jobs
from trainables import layout
from trainables.storage import Store, as_store

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
    # (checkpoint_id, layer, reason): representations whose new pairs got a null value because
    # their activation file is unusable (reason: "unreadable", "nonfinite" or "bad_shape")
    skipped_representations: tuple[tuple[str, str, str], ...] = ()


def run_analysis(sweep: str, spec: AnalysisSpec, *, workdir: str | os.PathLike | Store, tracking_uri: str,
                 echo: Echo = print, connect: Callable[[], None] | None = None) -> AnalysisOutcome:
    """Analyse every finished checkpoint of `sweep` (its lineages found in MLflow by tags).

    One analysis of a workdir runs at a time (a file lock; a second waits), and it first
    deletes the hidden temporaries that a killed run's atomic writes left behind, so an
    interrupted run leaves no partial file once the next one starts.

    connect: called before the first Ray Data stage (e.g. to `ray.init`), and only if there is
        something to compute, so that a run with nothing missing starts no Ray at all.
    """
    store = as_store(workdir)
    with store.lock(layout.ANALYSIS_LOCK):
        removed = sum(store.remove_temporaries(folder) for folder in (layout.ANALYSIS, layout.TABLES))
        if removed:
            echo(f"removed {removed} half-written file(s) left by an interrupted analysis")
        return _run_analysis(sweep, spec, store=store, tracking_uri=tracking_uri, echo=echo, connect=connect)


def _run_analysis(
    sweep: str,
    spec: AnalysisSpec,
    *,
    store: Store,
    tracking_uri: str,
    echo: Echo = print,
    connect: Callable[[], None] | None = None,
) -> AnalysisOutcome:
    ray = _LazyRay(connect)
    start = time.perf_counter()
    aid = analysis_id(spec)
    for line in set_aside_garbled_tables(store) + retry_unreadable(store, spec=spec, analysis_id=aid):
        echo(line)
    catalog = build_catalog(sweep, tracking_uri=tracking_uri, workdir=store)
    echo(f"analysis {aid}: {len(catalog)} checkpoints in sweep {sweep}")
    manifests, failed = _extract(catalog, spec, store, echo, ray)
    reps = _reps(catalog, manifests)
    pairs = pair_set(reps, layers=spec.layers, scope=spec.scope)
    total, computed, sketched, skipped = {}, {}, {}, set()
    for measure in spec.measures:
        done = _existing_keys(store, measure, aid)
        todo = [p for p in pairs if pair_key(*p) not in done]
        total[measure] = len(pairs)
        run = _similarity(todo, pairs, measure, spec, aid, store, ray) if todo else _TilesRun()
        computed[measure], sketched[measure] = run.rows, run.computed
        skipped |= run.skipped
        echo(f"analysis {aid}: {measure}: {len(pairs)} pairs, {len(pairs) - len(todo)} already computed, "
             f"{run.rows} new; sketches: {run.computed} computed, {run.loaded} read from disk")
    return AnalysisOutcome(aid, len(catalog), len(reps), tuple(failed), total, computed,
                           time.perf_counter() - start, sketched, tuple(sorted(skipped)))


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


def _extract(catalog: pl.DataFrame, spec: AnalysisSpec, store: Store, echo: Echo, ray):
    """Per-checkpoint products (activations, neurons, receptive fields, sharpness), computing in
    a Ray Data actor pool only the checkpoints that miss one."""
    missing = [
        {k: row[k] for k in ("checkpoint_id", "spec_json")}
        for row in catalog.iter_rows(named=True)
        if products(store, spec=spec, checkpoint_id=row["checkpoint_id"]).missing(spec)
    ]
    failed: list[tuple[str, str]] = []
    if missing:
        echo(f"checkpoints: {len(catalog) - len(missing)} cached, extracting {len(missing)}")
        ds = ray.data.from_items(missing).map_batches(
            CheckpointExtractor,
            fn_constructor_kwargs={"workdir": store.root, "spec_json": spec.model_dump_json()},
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
        found = products(store, spec=spec, checkpoint_id=cid)
        rows = read_manifest(store, key=found.manifest)
        if rows is not None:
            manifests[cid] = rows
        if store.exists(found.sharpness):
            values = store.read_json(found.sharpness)
            sharp.append({"checkpoint_id": cid, **{k: values[k] for k in SHARPNESS_COLUMNS}})
    update_columns(store, "levels", key="checkpoint_id", rows=sharp)
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


def _existing_keys(store: Store, measure: str, aid: str) -> set[tuple[str, str, str, str]]:
    files = [store.uri(key) for key in store.list_files(layout.similarity_dir(measure)) if key.endswith(".parquet")]
    if not files:
        return set()
    frame = (
        pl.scan_parquet(files)
        .filter(pl.col("analysis_id") == aid)
        .select("a_checkpoint_id", "a_layer", "b_checkpoint_id", "b_layer")
        .collect()
    )
    return set(frame.iter_rows())


@dataclass(frozen=True)
class _TilesRun:
    rows: int = 0  # rows written
    computed: int = 0  # sketches computed
    loaded: int = 0  # sketches read from disk
    skipped: frozenset[tuple[str, str, str]] = frozenset()  # (checkpoint_id, layer, reason)


def _similarity(todo, pairs, measure: str, spec: AnalysisSpec, aid: str, store: Store, ray) -> _TilesRun:
    """Evaluate the missing pairs tile by tile in a Ray Data actor; each tile writes one file."""
    jobs = tile_jobs(todo, pairs, measure=measure, spec=spec, workdir=store)
    items = [{"job": job.to_json()} for job in jobs]
    ds = ray.data.from_items(items).map_batches(
        TileWriter,
        fn_constructor_kwargs={"measure": measure, "spec_json": spec.model_dump_json(), "analysis_id": aid,
                               "workdir": store.root},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1),
        batch_size=1,
        num_cpus=1,
    )
    rows = list(ds.iter_rows())
    skipped = {(s["checkpoint_id"], s["layer"], s["reason"]) for row in rows for s in json.loads(row["skipped"])}
    return _TilesRun(*(sum(int(row[k]) for row in rows) for k in ("rows", "computed", "loaded")), frozenset(skipped))
