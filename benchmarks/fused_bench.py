"""Fused-training benchmark: K lineages of one configuration trained together by
`trainables.fused.run_bundle` against the same K lineages run one after another by
`trainables.lineage.run_lineage`, same specs, same steps, in the same process.

Cases: K = 16 `lenet_300_100` on MNIST-shaped data (1x28x28) and K = 8 `resnet20` on
CIFAR-shaped data (3x32x32), both the seeded `synthetic` dataset (nothing is downloaded), SGD
with momentum and weight decay, batch 128, levels 0..L (the dense level, then pruned ones). Both
modes run end to end: data, masks, training, evaluation, checkpoints, each repeat in a fresh
temporary workdir. Every mode is warmed up first on a one-step dataset of the same shapes;
repeats of the two modes are interleaved (so that a change in machine load hits both alike) and
the median repeat is reported. Reported per case: training images/s of each mode (K lineages x
levels x epochs x training examples over the wall time) and their ratio, and, as a check, the
largest relative weight difference and mask equality of the last level, fused vs sequential.
On a CPU the two modes do the same arithmetic, so fusing saves per-step overhead and parallel
regions only; with `--threads 1` the comparison is compute-bound, with more threads on a shared
machine the sequential mode's many small parallel regions suffer most from contention.

Writes benchmarks/results/fused-<device>.json and prints a table.

    python benchmarks/fused_bench.py [--device cpu|cuda] [--cases lenet_300_100,resnet20]
                                     [--repeats R] [--threads T] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainables import LineageSpec, load_checkpoint, run_lineage  # noqa: E402
from trainables.fused import run_bundle  # noqa: E402

BATCH_SIZE = 128
TRAIN = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": BATCH_SIZE}
TARGETS = {"cpu": {"lenet_300_100": 2.0}, "cuda": {"lenet_300_100": 8.0}}  # fused over sequential, at least


@dataclass(frozen=True)
class Size:
    n_train: int  # training examples (each epoch is ceil(n_train / 128) steps)
    epochs: int  # per level
    levels: int  # pruned levels after the dense level 0
    repeats: int


@dataclass(frozen=True)
class Case:
    k: int  # lineages fused
    input_shape: tuple[int, ...]
    cpu: Size
    cuda: Size
    quick: Size


CASES = {
    "lenet_300_100": Case(16, (1, 28, 28), cpu=Size(2048, 1, 1, 3), cuda=Size(16384, 2, 1, 3), quick=Size(256, 1, 0, 1)),
    # On CPU a resnet20 step costs about a second per lineage: one step each, a smoke-sized measurement.
    "resnet20": Case(8, (3, 32, 32), cpu=Size(128, 1, 0, 1), cuda=Size(8192, 1, 1, 3), quick=Size(128, 1, 0, 1)),
}


def lineage_specs(name: str, case: Case, size: Size, n_train: int | None = None) -> list[LineageSpec]:
    data = {"n_train": n_train or size.n_train, "n_test": 256, "input_shape": list(case.input_shape),
            "num_classes": 10, "seed": 0}
    return [
        LineageSpec.model_validate({
            "model": name, "dataset": "synthetic", "dataset_options": data, "seed": seed,
            "train": {**TRAIN, "epochs": size.epochs}, "prune": {"rate": 0.2, "levels": size.levels},
        })
        for seed in range(case.k)
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_sequential(specs, workdir: Path, device: torch.device):
    return [run_lineage(spec, workdir=workdir, device=device) for spec in specs]


def run_fused(specs, workdir: Path, device: torch.device):
    return run_bundle(specs, workdir=workdir, device=device)


MODES = {"sequential": run_sequential, "fused": run_fused}


def _timed(mode: str, specs, workdir: Path, device: torch.device):
    _sync(device)
    t0 = time.perf_counter()
    results = MODES[mode](specs, workdir, device)
    _sync(device)
    return time.perf_counter() - t0, results


def _compare(sequential, fused) -> dict:
    """Last level of every lineage: largest relative weight difference (of each tensor's largest
    |value|) and whether all masks are equal."""
    worst, masks_equal = 0.0, True
    for a, b in zip(sequential, fused):
        ca, cb = load_checkpoint(a.levels[-1].checkpoint_dir), load_checkpoint(b.levels[-1].checkpoint_dir)
        masks_equal &= all(torch.equal(ca.masks[n], cb.masks[n]) for n in ca.masks)
        for n, x in ca.model.items():
            if x.is_floating_point():
                x, y = x.double(), cb.model[n].double()
                worst = max(worst, float((x - y).abs().max() / x.abs().max().clamp_min(1e-30)))
    return {"max_rel_weight_diff": worst, "masks_equal": masks_equal}


def bench_case(name: str, case: Case, size: Size, device: torch.device, repeats: int) -> dict:
    specs = lineage_specs(name, case, size)
    images = case.k * (size.levels + 1) * size.epochs * size.n_train
    with tempfile.TemporaryDirectory(prefix="fused-bench-") as tmp:
        warm = lineage_specs(name, case, size, n_train=BATCH_SIZE)[:2]
        for mode in MODES:
            _timed(mode, warm, Path(tmp, f"warm-{mode}"), device)
        walls: dict[str, list[float]] = {mode: [] for mode in MODES}
        last = {}
        for r in range(repeats):
            for mode in MODES:
                wall, last[mode] = _timed(mode, specs, Path(tmp, f"{mode}-{r}"), device)
                walls[mode].append(wall)
                print(f"  {name} {mode} repeat {r}: {wall:.1f} s (load average {_loadavg()})", flush=True)
        check = _compare(last["sequential"], last["fused"])
    seq, fused = statistics.median(walls["sequential"]), statistics.median(walls["fused"])
    target = TARGETS.get(device.type, {}).get(name)
    return {
        "k": case.k, "input_shape": list(case.input_shape), "n_train": size.n_train, "epochs": size.epochs,
        "levels": size.levels + 1, "batch_size": BATCH_SIZE, "steps_per_lineage": (size.levels + 1) * size.epochs
        * -(-size.n_train // BATCH_SIZE), "images": images, "repeats": repeats,
        "sequential_wall_s": walls["sequential"], "fused_wall_s": walls["fused"],
        "sequential_images_per_s": images / seq, "fused_images_per_s": images / fused, "ratio": seq / fused,
        "target_ratio": target, "target_met": None if target is None else seq / fused >= target, **check,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _code_rev() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


def table(results: dict) -> str:
    head = (f"{'model':<14} {'K':>3} {'steps':>5} {'sequential img/s':>16} {'fused img/s':>12} {'ratio':>7} "
            f"{'target':>7} {'max rel diff':>12} {'masks':>6}")
    lines = [head, "-" * len(head)]
    for name, r in results["cases"].items():
        target = "-" if r["target_ratio"] is None else f"{r['target_ratio']:.0f}x" + ("" if r["target_met"] else "!")
        lines.append(
            f"{name:<14} {r['k']:>3} {r['steps_per_lineage']:>5} {r['sequential_images_per_s']:>16.0f} "
            f"{r['fused_images_per_s']:>12.0f} {r['ratio']:>6.2f}x {target:>7} {r['max_rel_weight_diff']:>12.1e} "
            f"{'same' if r['masks_equal'] else 'DIFF':>6}"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated, of " + ", ".join(CASES))
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per mode (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/fused-<device>.json)")
    args = p.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; expected some of {list(CASES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before, started = _loadavg(), time.perf_counter()
    cases = {}
    for name in args.cases:
        case = CASES[name]
        size = case.quick if args.quick else getattr(case, device.type)
        cases[name] = bench_case(name, case, size, device, args.repeats or size.repeats)
        print(f"{name}: fused {cases[name]['ratio']:.2f}x sequential "
              f"({time.perf_counter() - started:.0f} s, load average {_loadavg()})", flush=True)
    results = {
        "benchmark": "fused",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "code_rev": _code_rev(),
        "device": args.device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "train": {"optimizer": "sgd", **TRAIN},
        "dataset": "synthetic (seeded Gaussian clusters, 10 classes, 256 test examples)",
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
        "wall_s": round(time.perf_counter() - started, 1),
        "cases": cases,
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"fused-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
