"""Cost model of the analysis stage (`impsweep analyze`), measured per tile on this machine.

On synthetic activations shaped like real probe layers (n probe examples; fully connected
widths 64-512 and two conv maps), the time of each part of a tile as the pipeline runs it:
loading an activation file, sketching a representation (per sketch kind: one "cca" sketch
serves every CCA measure), the pair kernels (per pair, per measure, on a tile of sketches),
reading a stored sketch back, and writing the Parquet rows. From these, representations/s and
pairs/s per measure, then the projection for a sweep of 100 configs x 5 seeds x 20 levels
(10,000 checkpoints) x 10 probe layers: representations, pairs for every `layers`/`scope`
combination (formulas checked against `analysis.pairs.pair_set` on a small catalog), single-core
CPU-hours = measured per-representation and per-pair costs x counts, and the disk the stored
sketches take. Writes benchmarks/results/analysis-<device>.json and prints the tables.

    python benchmarks/analysis_bench.py [--n 1000] [--layers fc64,...] [--measures linear_cka,...]
                                        [--reps 3] [--threads 1] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.pairs import Rep, Tile, pair_set, tiles  # noqa: E402
from analysis.tile_writer import LayerPairPlan, TileJob, TileWriter  # noqa: E402
from analysis.similarity import (MEASURES, cka_form, pairwise_sketches, sketch, sketch_spec,  # noqa: E402
                                 to_payload)
from analysis.similarity.spectra import cpu_backend  # noqa: E402
from analysis.sketch_store import fits  # noqa: E402
from analysis.specs import AnalysisSpec  # noqa: E402
from analysis.tables import to_arrow, write_table  # noqa: E402
from trainables import layout  # noqa: E402
from trainables.storage import LocalStore  # noqa: E402
from benchmarks._timing import (  # noqa: E402
    Session, add_common_arguments, check_common_arguments, contended, write_results,
)

# Probe layers: per-example shapes ([p] or [c, h, w]) like LeNet/VGG/ResNet layers.
LAYERS = {"fc64": (64,), "fc128": (128,), "fc256": (256,), "fc512": (512,), "conv32x8x8": (32, 8, 8),
          "conv64x4x4": (64, 4, 4)}
KNOWN_MEASURES = ("linear_cka", "pwcca", "svcca", "mean_cca", "nbs")
SWEEP = {"configs": 100, "seeds": 5, "levels": 20, "layers": 10}  # 10,000 checkpoints x 10 layers
TILE_SIZE = AnalysisSpec().tile_size
CKA_TILE = 32  # a CKA tile's side: products are batched, so a 3 x 3 tile would time call overhead


def activations(shape: tuple[int, ...], count: int, n: int, seed: int) -> list[np.ndarray]:
    """ReLU of a shared low-rank signal plus noise (float32, as stored): some units die."""
    rng = np.random.default_rng(seed)
    width = math.prod(shape)
    base = rng.standard_normal((n, 32))
    out = []
    for _ in range(count):
        mix = rng.standard_normal((32, width)) / 4
        x = np.maximum(base @ mix + rng.standard_normal((n, width)) - 0.3, 0)
        out.append(x.reshape(n, *shape).astype(np.float32))
    return out


def mean_time(fn, items) -> tuple[float, list]:
    results, times = [], []
    for item in items:
        t0 = time.perf_counter()
        results.append(fn(item))
        times.append(time.perf_counter() - t0)
    return statistics.mean(times), results


def bench_layer(name: str, shape: tuple[int, ...], n: int, k: int, measures: list[str], folder: Path,
                device: torch.device) -> dict:
    """Per-representation and per-pair costs of one layer shape: 2k representations."""
    xs = activations(shape, 2 * k, n, seed=len(name))
    paths = []
    for i, x in enumerate(xs):
        paths.append(folder / name / f"r{i}.npy")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        np.save(paths[-1], x)
    file_bytes = paths[0].stat().st_size
    load_s, loaded = mean_time(np.load, paths)
    full = (n, *shape)
    out: dict = {"shape": list(full), "activation_bytes": file_bytes, "load_s": load_s, "kinds": {}, "pairs": {}}
    for measure in measures:
        forms = [None]
        if measure in ("linear_cka", "linear_cka_debiased"):
            # The all-pairs form, and the feature form where a sparse scope would pick it.
            forms = sorted({cka_form(measure, [full]), cka_form(measure, [full] * 2, pairs=1)})
        for form in forms:
            spec = sketch_spec(measure, full, form=form)
            label = spec.kind if spec.kind in ("cca", "nbs") else f"{spec.kind}:{spec.form}"
            if label not in out["kinds"]:
                sketch_s, sketches = mean_time(lambda x: sketch(x, spec, device=device), loaded)
                out["kinds"][label] = {"sketch_s": sketch_s, **_stored_costs(sketches, file_bytes, folder)}
                out["kinds"][label]["sketches"] = sketches
            sketches = out["kinds"][label]["sketches"]
            side = CKA_TILE if MEASURES[measure].family == "cka" else k
            rows = (sketches[:k] * side)[:side]
            cols = (sketches[k:] * side)[:side]
            t0 = time.perf_counter()
            pairwise_sketches(rows, cols, measure=measure)
            pair_s = (time.perf_counter() - t0) / (side * side)
            key = measure if form is None else f"{measure}:{form}"
            out["pairs"][key] = {"pair_s": pair_s, "tile": [side, side], "kind": label}
    for kind in out["kinds"].values():
        del kind["sketches"]
    return out


def _stored_costs(sketches: list, file_bytes: int, folder: Path) -> dict:
    """Bytes of a stored sketch file, whether the size rule stores it, and the time to read it."""
    buffer = io.BytesIO()
    torch.save({"sketch": to_payload(sketches[0])}, buffer)
    path = folder / "sketch.pt"
    path.write_bytes(buffer.getvalue())
    read_s, _ = mean_time(lambda p: torch.load(p, weights_only=True), [path] * 3)
    return {"sketch_bytes": len(buffer.getvalue()), "stored": fits(sketches[0], file_bytes), "read_s": read_s}


def bench_parquet(folder: Path) -> dict:
    """Seconds per similarity row (a 64 x 64 tile's file) and per file (one row)."""
    def rows(count: int) -> list[dict]:
        return [{"analysis_id": "a0", "a_checkpoint_id": f"c0-s0/L{i % 20:02d}", "a_lineage_id": "c0-s0",
                 "a_level": i % 20, "a_layer": "fc1", "b_checkpoint_id": f"c0-s1/L{i % 17:02d}",
                 "b_lineage_id": "c0-s1", "b_level": i % 17, "b_layer": "fc1", "value": 0.5 + i * 1e-5,
                 "n_examples": 1000, "a_dim": 100, "b_dim": 90, "conv_mode": "none", "options": "{}",
                 "status": "ok"} for i in range(count)]
    def write(count: int, repeats: int) -> float:
        data, store = rows(count), LocalStore(folder)
        t0 = time.perf_counter()
        for r in range(repeats):
            write_table(store, f"parquet/p{count}-{r}.parquet", table=to_arrow(data, "similarity"))
        return (time.perf_counter() - t0) / repeats
    file_s = write(1, 10)
    big = TILE_SIZE * TILE_SIZE
    return {"file_s": file_s, "row_s": max(write(big, 3) - file_s, 0.0) / big}


def bench_tile_writer(name: str, layer: dict, k: int, measures: list[str], folder: Path) -> dict:
    """One k x k tile of layer `name` through the pipeline's own tile actor, with a fresh store
    (sketches computed and stored) and again with a new actor (sketches read back), beside what
    the parts measured above predict for the fresh tile."""
    shape = tuple(layer["shape"])
    xs = activations(shape[1:], 2 * k, shape[0], seed=99)
    out = {}
    for measure in measures:
        reps = []
        for i, x in enumerate(xs):
            key = layout.activation_file("pB", f"c0-s{i}/L00", layer=name)
            (folder / measure / key).parent.mkdir(parents=True, exist_ok=True)
            np.save(folder / measure / key, x)
            reps.append(Rep(f"c0-s{i}/L00", name, f"c0-s{i}", "c0", 0, "g", key))
        tile = Tile(tuple(reps[:k]), tuple(reps[k:]), tuple((i, j) for i in range(k) for j in range(k)))
        spec = AnalysisSpec(measures=(measure,))
        form = cka_form(measure, [shape] * (2 * k), pairs=k * k) if MEASURES[measure].family == "cka" else None
        job = TileJob(tile, LayerPairPlan(shape, shape, form))
        times = []
        for _ in range(2):
            # A workdir per measure: the CCA measures would share their sketches.
            writer = TileWriter(measure, spec_json=spec.model_dump_json(), analysis_id="a0", workdir=folder / measure)
            t0 = time.perf_counter()
            writer.write(job)
            times.append(time.perf_counter() - t0)
        key = measure if form is None else f"{measure}:{form}"
        part = layer["pairs"].get(key) or next(v for k_, v in layer["pairs"].items() if k_.startswith(measure))
        predicted = (2 * k * (layer["load_s"] + layer["kinds"][part["kind"]]["sketch_s"])
                     + k * k * part["pair_s"])
        out[measure] = {"layer": name, "pairs": k * k, "fresh_s": times[0], "stored_s": times[1],
                        "parts_predict_s": predicted}
    return out


# ---- the pair sets of a sweep: formulas, checked against analysis.pairs ----

def pair_count(configs: int, seeds: int, levels: int, layers_n: int, *, layers: str, scope: str) -> int:
    """Pairs of `pair_set` for one model/dataset group of configs x seeds lineages of `levels`
    checkpoints (level 0 dense) and `layers_n` probe layers."""
    lineages, checkpoints = configs * seeds, configs * seeds * levels
    checkpoint_pairs = {"dense": lineages * levels, "lineage": lineages * levels * (levels + 1) // 2,
                        "seeds": configs * levels * seeds * (seeds + 1) // 2,
                        "all": checkpoints * (checkpoints + 1) // 2}[scope]
    if layers == "same":
        return checkpoint_pairs * layers_n
    # A checkpoint with itself (in `dense` only the dense ones): unordered layer pairs; with
    # another checkpoint: every ordered layer pair.
    selves = lineages if scope == "dense" else checkpoints
    return selves * layers_n * (layers_n + 1) // 2 + (checkpoint_pairs - selves) * layers_n ** 2


def small_catalog(configs: int, seeds: int, levels: int, layers_n: int) -> list[Rep]:
    return [Rep(f"c{c}-s{s}/L{lv:02d}", f"l{y}", f"c{c}-s{s}", f"c{c}", lv, "g", "")
            for c in range(configs) for s in range(seeds) for lv in range(levels) for y in range(layers_n)]


def check_formulas() -> None:
    reps = small_catalog(2, 3, 4, 3)
    for layers in ("same", "all"):
        for scope in ("dense", "lineage", "seeds", "all"):
            got = len(pair_set(reps, layers=layers, scope=scope))
            if got != pair_count(2, 3, 4, 3, layers=layers, scope=scope):
                raise RuntimeError(f"pair_count({layers}, {scope}) != pair_set: {got}")


def rows_per_tile(layers: str, scope: str) -> float:
    """Pairs per tile file of `tiles` on a tenth of the sweep (5 seeds x 20 levels x 10 configs, 2
    layers): sparse scopes give small tiles; for `all` a lower bound (more files, conservative)."""
    reps = small_catalog(10, SWEEP["seeds"], SWEEP["levels"], 2)
    pairs = pair_set(reps, layers=layers, scope=scope)
    return len(pairs) / len(tiles(pairs, TILE_SIZE))


def cost_model(layers_result: dict, parquet: dict, measures: list[str]) -> dict:
    """Counts and single-core hours for the SWEEP, from the layer mix's mean costs."""
    reps = SWEEP["configs"] * SWEEP["seeds"] * SWEEP["levels"] * SWEEP["layers"]
    per_layer = list(layers_result.values())
    load_s = statistics.mean(r["load_s"] for r in per_layer)
    out = {"sweep": dict(SWEEP), "representations": reps, "tile_size": TILE_SIZE, "combinations": {}}
    for layers in ("same", "all"):
        for scope in ("dense", "lineage", "seeds", "all"):
            pairs = pair_count(*(SWEEP[k] for k in ("configs", "seeds", "levels", "layers")), layers=layers,
                               scope=scope)
            files = pairs / rows_per_tile(layers, scope)
            layer_pairs = SWEEP["layers"] if layers == "same" else SWEEP["layers"] * (SWEEP["layers"] + 1) // 2
            per_rep_pairs = pairs / layer_pairs  # pairs among one layer pair's representations
            combo = {"pairs": pairs, "files": round(files), "measures": {}}
            for measure in measures:
                rep_s, pair_s, disk, kinds = [], [], [], set()
                for r in per_layer:
                    pair, kind = _measured(r, measure, [tuple(r["shape"])] * (reps // SWEEP["layers"]), per_rep_pairs)
                    kinds.add(pair["kind"].split(":")[0])
                    rep_s.append(kind["sketch_s"])
                    pair_s.append(pair["pair_s"])
                    disk.append(kind["sketch_bytes"] if kind["stored"] else 0)
                sketch_h = reps * (load_s + statistics.mean(rep_s)) / 3600
                pairs_h = pairs * (statistics.mean(pair_s) + parquet["row_s"]) / 3600 + files * parquet["file_s"] / 3600
                combo["measures"][measure] = {
                    "sketch_kind": sorted(kinds)[0], "sketch_cpu_h": sketch_h, "pair_cpu_h": pairs_h,
                    "cpu_h": sketch_h + pairs_h, "sketch_disk_bytes": reps * statistics.mean(disk)}
            # Sketches are shared: one per kind and representation, whatever the measures.
            by_kind = {}
            for m in combo["measures"].values():
                by_kind[m["sketch_kind"]] = (m["sketch_cpu_h"], m["sketch_disk_bytes"])
            combo["total_cpu_h"] = (sum(h for h, _ in by_kind.values())
                                    + sum(m["pair_cpu_h"] for m in combo["measures"].values()))
            combo["sketch_disk_bytes"] = sum(d for _, d in by_kind.values())
            combo["sketch_disk_bytes_by_kind"] = {k: d for k, (_, d) in by_kind.items()}
            out["combinations"][f"{layers}/{scope}"] = combo
    out["activation_disk_bytes"] = reps * statistics.mean(r["activation_bytes"] for r in per_layer)
    return out


def _measured(layer: dict, measure: str, shapes: list, pairs: float | None) -> tuple[dict, dict]:
    """(pair costs, sketch costs) of `measure` on one layer, at the CKA form that `pairs` pairs
    among representations of `shapes` would use (the measured form when that one was not)."""
    key = measure
    if MEASURES[measure].family == "cka":
        key = f"{measure}:{cka_form(measure, shapes, pairs=pairs)}"
        if key not in layer["pairs"]:
            key = next(k for k in layer["pairs"] if k.split(":")[0] == measure)
    return layer["pairs"][key], layer["kinds"][layer["pairs"][key]["kind"]]


def summary(layers_result: dict, parquet: dict, measures: list[str]) -> dict:
    """Representations/s (load + sketch of the measure's kind) and pairs/s (kernel + row written),
    harmonic over the layer mix, at the all-pairs CKA form."""
    out = {}
    for measure in measures:
        rep_s, pair_s = [], []
        for r in layers_result.values():
            pair, kind = _measured(r, measure, [tuple(r["shape"])], None)
            rep_s.append(r["load_s"] + kind["sketch_s"])
            pair_s.append(pair["pair_s"] + parquet["row_s"])
        out[measure] = {"reps_per_s": 1 / statistics.mean(rep_s), "pairs_per_s": 1 / statistics.mean(pair_s)}
    return out


def print_tables(results: dict) -> None:
    print(f"\nper representation and per pair (n = {results['n']}, {results['threads']} thread(s); "
          "(mem): over the size rule, kept in memory only):")
    for name, r in results["layers"].items():
        kinds = ", ".join(f"{k} {v['sketch_s'] * 1e3:.1f}{'' if v['stored'] else ' (mem)'}"
                          for k, v in r["kinds"].items())
        pairs = ", ".join(f"{k} {v['pair_s'] * 1e3:.2f}" for k, v in r["pairs"].items())
        print(f"{name:11} load ms {r['load_s'] * 1e3:.2f}; sketch ms: {kinds}\n{'':11} pair ms: {pairs}")
    print(f"parquet: {results['parquet']['row_s'] * 1e6:.1f} us/row, {results['parquet']['file_s'] * 1e3:.1f} ms/file")
    print("\none tile through the pipeline's tile actor (s): fresh / sketches stored / parts predict")
    for m, v in results["tile_writer"].items():
        print(f"  {m:12} {v['layer']} {v['pairs']} pairs: {v['fresh_s']:.3f} / {v['stored_s']:.3f} / "
              f"{v['parts_predict_s']:.3f}")
    print("\nthroughput (layer mix):")
    for m, v in results["summary"].items():
        print(f"  {m:12} {v['reps_per_s']:8.2f} reps/s {v['pairs_per_s']:10.1f} pairs/s")
    model = results["cost_model"]
    measures = list(results["summary"])
    print(f"\ncost model: {model['representations']:,} representations "
          f"({model['sweep']['configs']} configs x {model['sweep']['seeds']} seeds x {model['sweep']['levels']} levels"
          f" x {model['sweep']['layers']} layers); single-core CPU-hours")
    print(f"{'layers/scope':14} {'pairs':>16} " + " ".join(f"{m:>12}" for m in measures)
          + f" {'all':>10} {'sketch disk':>12}")
    for name, c in model["combinations"].items():
        cells = " ".join(f"{c['measures'][m]['cpu_h']:12.4g}" for m in measures)
        print(f"{name:14} {c['pairs']:16,} {cells} {c['total_cpu_h']:10.4g} {c['sketch_disk_bytes'] / 1e9:10.1f} GB")
    print(f"activations on disk: {model['activation_disk_bytes'] / 1e9:.1f} GB; stored sketches by kind (GB): "
          + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in
                      model["combinations"]["same/all"]["sketch_disk_bytes_by_kind"].items()))
    print("per measure: its own sketches and pairs; all: every measure above, sketches shared by kind")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, names="measures", known=KNOWN_MEASURES,
                         repeats_help="not used: every part is timed on each representation or tile",
                         quick_help="n = 400, 2 representations a side, fewer layers: a smoke run",
                         out_default="benchmarks/results/analysis-<device>.json")
    parser.add_argument("--n", type=int, default=1000, help="probe examples (DESIGN: 5,000 for torchvision data)")
    parser.add_argument("--layers", default=",".join(LAYERS), help="comma-separated, of " + ", ".join(LAYERS))
    parser.add_argument("--reps", type=int, default=3, help="representations a side of a CCA/NBS tile")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a tile actor has one CPU)")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args, names="measures", known=KNOWN_MEASURES)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    if unknown := [name for name in layers if name not in LAYERS]:
        parser.error(f"unknown layers {unknown}; expected some of {list(LAYERS)}")
    if args.quick:
        args.n, args.reps, layers = 400, 2, [name for name in layers if name in ("fc64", "fc256", "conv64x4x4")]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    session = Session()
    check_formulas()
    results: dict = {"n": args.n, "reps": args.reps, "cka_tile": CKA_TILE, "cpu_lapack": cpu_backend(),
                     "layers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in layers:
            print(f"{name}: {LAYERS[name]} x n = {args.n} ({session.elapsed_s():.0f} s)", flush=True)
            results["layers"][name] = bench_layer(name, LAYERS[name], args.n, args.reps, args.measures, folder, device)
        results["parquet"] = bench_parquet(folder)
        check = "fc256" if "fc256" in layers else layers[0]
        results["tile_writer"] = bench_tile_writer(check, results["layers"][check], args.reps, args.measures,
                                                   folder)
    results["summary"] = summary(results["layers"], results["parquet"], args.measures)
    results["cost_model"] = cost_model(results["layers"], results["parquet"], args.measures)
    results.update(session.facts(device))
    results["contended"] = contended(session.loadavg_before, args.threads)
    print_tables(results)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"analysis-{device.type}.json"
    write_results(results, out)
    print(f"\nwrote {out} (wall {results['wall_s']} s, load average {results['loadavg_before']} -> "
          f"{results['loadavg_after']}{'; CONTENDED' if results['contended'] else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
