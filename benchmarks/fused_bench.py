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
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._timing import (  # noqa: E402
    Session, add_common_arguments, check_common_arguments, code_rev, interleaved_repeats, loadavg, timed,
    write_results,
)
from trainables import LineageSpec, load_checkpoint, run_lineage  # noqa: E402
from trainables.fused import run_bundle  # noqa: E402
from trainables.loop import resolve_precision  # noqa: E402

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


def lineage_specs(name: str, case: Case, size: Size, n_train: int | None = None,
                  precision: str = "auto") -> list[LineageSpec]:
    data = {"n_train": n_train or size.n_train, "n_test": 256, "input_shape": list(case.input_shape),
            "num_classes": 10, "seed": 0}
    return [
        LineageSpec.model_validate({
            "model": name, "dataset": "synthetic", "dataset_options": data, "seed": seed,
            "train": {**TRAIN, "epochs": size.epochs}, "prune": {"rate": 0.2, "levels": size.levels},
            "precision": precision,
        })
        for seed in range(case.k)
    ]


def run_sequential(specs, workdir: Path, device: torch.device):
    return [run_lineage(spec, workdir=workdir, device=device) for spec in specs]


def run_fused(specs, workdir: Path, device: torch.device):
    return run_bundle(specs, workdir=workdir, device=device)


MODES = {"sequential": run_sequential, "fused": run_fused}


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


def bench_case(name: str, case: Case, size: Size, device: torch.device, repeats: int,
               precision: str = "auto") -> dict:
    specs = lineage_specs(name, case, size, precision=precision)
    images = case.k * (size.levels + 1) * size.epochs * size.n_train
    with tempfile.TemporaryDirectory(prefix="fused-bench-") as tmp:
        warm = lineage_specs(name, case, size, n_train=BATCH_SIZE, precision=precision)[:2]
        for mode, run in MODES.items():
            timed(lambda: run(warm, Path(tmp, f"warm-{mode}"), device), device)
        walls, last = interleaved_repeats(
            {mode: lambda r, run=run, mode=mode: run(specs, Path(tmp, f"{mode}-{r}"), device)
             for mode, run in MODES.items()},
            repeats, device,
            on_repeat=lambda mode, r, wall, _: print(f"  {name} {mode} repeat {r}: {wall:.1f} s "
                                                      f"(load average {loadavg()})", flush=True),
        )
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
    add_common_arguments(p, names="cases", known=list(CASES), repeats_help="timed repeats per mode (median reported)",
                         quick_help="tiny sizes: a smoke test, not a measurement",
                         out_default="benchmarks/results/fused-<device>.json")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="the lineages' precision, both modes (auto: bf16 on CUDA, fp32 on CPU)")
    args = p.parse_args(argv)
    check_common_arguments(p, args, names="cases", known=list(CASES))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    session = Session()
    cases = {}
    for name in args.cases:
        case = CASES[name]
        size = case.quick if args.quick else getattr(case, device.type)
        cases[name] = bench_case(name, case, size, device, args.repeats or size.repeats, args.precision)
        print(f"{name}: fused {cases[name]['ratio']:.2f}x sequential "
              f"({session.elapsed_s():.0f} s, load average {loadavg()})", flush=True)
    results = {
        "benchmark": "fused",
        "code_rev": code_rev(ROOT),
        **session.facts(device),
        "quick": args.quick,
        "precision": "bf16 autocast" if resolve_precision(args.precision, device) == "bf16" else "fp32",
        "train": {"optimizer": "sgd", **TRAIN},
        "dataset": "synthetic (seeded Gaussian clusters, 10 classes, 256 test examples)",
        "cases": cases,
    }
    out = write_results(results, Path(args.out) if args.out else ROOT / "benchmarks" / "results"
                        / f"fused-{args.device}.json")
    print(table(results))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
