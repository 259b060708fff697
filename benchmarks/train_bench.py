"""Training-speed benchmark: impsweep's masked IMP training step against a pinned plain-PyTorch
baseline, same model, batch size, step count and optimizer, in the same run.

impsweep's loop is exactly what a lineage runs for a pruned level: data resident on the device
as one tensor, each epoch drawn by `trainables.data.epoch_batches` (permutation and, for
CIFAR-shaped data, flips and crops of the whole epoch in bulk), `trainables.loop.train_epoch`
with `make_optimizer` and `lr_at`, masks from `trainables.pruning.magnitude_masks` at 80%
sparsity (rate 0.2, log(0.2)/log(0.8) rounds), channels_last for convolutional models (CPU and
CUDA), and on CUDA bf16 autocast and optionally torch.compile, as the lineage sets them.

The baseline is pinned: `DataLoader(TensorDataset, batch_size=B, shuffle=True, num_workers=0)`
over host tensors, torchvision's per-sample `RandomCrop(32, padding=4)` and
`RandomHorizontalFlip()` applied in the dataset for CIFAR-shaped data, batches moved to the
device one at a time, masks through `torch.nn.utils.prune.global_unstructured` (L1, the same
weights and the same count as impsweep's), `torch.optim.SGD` with momentum, fp32.

Data is synthetic and seeded (MNIST-shaped 1x28x28, CIFAR-shaped 3x32x32); nothing is
downloaded. One timed repeat is a whole number of epochs; every configuration is warmed up
first, repeats of the configurations are interleaved (so that a change in machine load hits all
of them alike), and the median repeat is reported, with the median of the per-repeat (paired)
ratios beside it. Reported per model: model-images/s of impsweep's loop and of the baseline and
their ratio, and the masked-step over dense-step time of impsweep's loop (the dense step: the
same loop with no masks, i.e. the masking overhead).

Writes benchmarks/results/train-<device>.json and prints a table.

    python benchmarks/train_bench.py [--device cpu|cuda] [--models lenet_300_100,conv4,resnet20]
                                     [--steps N] [--batch-size B] [--repeats R] [--compile]
                                     [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._timing import (  # noqa: E402
    Session, add_common_arguments, check_common_arguments, contended, interleaved_repeats, loadavg, write_results,
)
from trainables.data import epoch_batches  # noqa: E402
from trainables.loop import autocast, lr_at, make_optimizer, resolve_precision, train_epoch, wants_channels_last  # noqa: E402
from trainables.masks import Masks, dense_masks, prunable_names  # noqa: E402
from trainables.models import build_model  # noqa: E402
from trainables.pruning import magnitude_masks, rounds_for  # noqa: E402
from trainables.specs import PruneSpec, TrainSpec  # noqa: E402

SPARSITY = 0.8
PRUNE = PruneSpec(rate=0.2)  # global magnitude ranking; biases and norms are never pruned
TRAIN = TrainSpec(lr=0.05, momentum=0.9, weight_decay=1e-4, batch_size=128)
NUM_CLASSES = 10
MASKED_OVER_DENSE_MAX = 1.10


@dataclass(frozen=True)
class Case:
    input_shape: tuple[int, ...]
    augment: bool  # CIFAR-shaped: flips and crops
    cpu_steps: int  # default steps per timed repeat on CPU (a whole number of epochs)
    cpu_repeats: int
    cuda_steps: int
    cuda_repeats: int


MNIST_SHAPE, CIFAR_SHAPE = (1, 28, 28), (3, 32, 32)
CASES = {
    "lenet_300_100": Case(MNIST_SHAPE, False, cpu_steps=120, cpu_repeats=5, cuda_steps=400, cuda_repeats=5),
    "conv4": Case(CIFAR_SHAPE, True, cpu_steps=8, cpu_repeats=3, cuda_steps=400, cuda_repeats=5),
    "resnet20": Case(CIFAR_SHAPE, True, cpu_steps=8, cpu_repeats=3, cuda_steps=400, cuda_repeats=5),
}
# impsweep's loop over the baseline, in model-images/s (issue 7).
SPEEDUP_TARGETS = {
    "cpu": {"lenet_300_100": 2.0, "resnet20": 1.2},
    "cuda": {"resnet20": 4.0},
}
MAX_STEPS_PER_EPOCH = 64  # bounds the synthetic dataset at 64 batches
QUICK = {"steps": 4, "repeats": 1, "warmup": 1, "batch_size": 32}


def epochs_for(steps: int) -> tuple[int, int]:
    """(epochs, steps per epoch) for about `steps` steps in whole epochs of at most 64 steps."""
    epochs = max(1, math.ceil(steps / MAX_STEPS_PER_EPOCH))
    return epochs, math.ceil(steps / epochs)


def synthetic_data(shape: tuple[int, ...], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded standard-normal images and uniform labels, on the host."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return x, y


def initial_model(name: str, shape: tuple[int, ...], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name, input_shape=shape, num_classes=NUM_CLASSES)


def impsweep_masks(model: nn.Module, sparsity: float = SPARSITY) -> Masks:
    """What an IMP lineage holds at `sparsity`: magnitude masks after log(1-s)/log(1-rate) rounds."""
    names = prunable_names(model, PRUNE)
    return magnitude_masks(model, dense_masks(model, names), spec=PRUNE, rounds=rounds_for(sparsity, PRUNE.rate))


# ---- impsweep's loop --------------------------------------------------------------------------

class ImpsweepRun:
    """A lineage's training of one level: resident data, epoch_batches, train_epoch."""

    def __init__(self, model: nn.Module, masks: Masks, x: torch.Tensor, y: torch.Tensor, *, augment: bool,
                 batch_size: int, steps_per_epoch: int, device: torch.device, compile: bool, seed: int,
                 precision: str = "auto"):
        self.device, self.precision = device, precision
        channels_last = wants_channels_last(model, x)
        self.x, self.y = x.to(device), y.to(device)
        self.model = model.to(device)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile else self.model
        self.masks = {n: m.to(device) for n, m in masks.items()}
        self.optimizer = make_optimizer(self.model, TRAIN)
        self.augment, self.batch_size, self.seed = augment, batch_size, seed
        self.steps_per_epoch = steps_per_epoch
        self.epoch = self.step = 0

    def _lr(self, step: int) -> float:
        return lr_at(step, train=TRAIN, steps_per_epoch=self.steps_per_epoch)

    def _batches(self):
        batches = epoch_batches(self.x, self.y, batch_size=self.batch_size, epoch_seed=self.seed + self.epoch,
                                augment=self.augment)
        self.epoch += 1
        return batches

    def steps(self, n: int) -> int:
        """`n` steps from the start of an epoch (warm-up)."""
        _, taken = train_epoch(self.model, self.optimizer, batches=islice(self._batches(), n), masks=self.masks,
                               lr_of_step=self._lr, first_step=self.step, forward=self.forward,
                               precision=self.precision)
        self.step += taken
        return taken

    def epochs(self, n: int) -> int:
        total = 0
        for _ in range(n):
            _, taken = train_epoch(self.model, self.optimizer, batches=self._batches(), masks=self.masks,
                                   lr_of_step=self._lr, first_step=self.step, forward=self.forward,
                                   precision=self.precision)
            self.step += taken
            total += taken
        return total

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.forward(x.to(self.device)).float()


# ---- the pinned plain-PyTorch baseline --------------------------------------------------------

class TransformedTensorDataset(TensorDataset):
    """TensorDataset whose images go through a per-sample torchvision transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform=None):
        super().__init__(x, y)
        self.transform = transform

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return (x if self.transform is None else self.transform(x)), y


def baseline_prune(model: nn.Module, names: tuple[str, ...], n_pruned: int) -> None:
    """torch.nn.utils.prune.global_unstructured over the parameters `names`, `n_pruned` weights."""
    targets = [(model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]) for name in names]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=n_pruned)


def baseline_masks(model: nn.Module) -> Masks:
    """The masks torch.nn.utils.prune holds, under the plain parameter names."""
    return {name.removesuffix("_mask"): mask.bool() for name, mask in model.named_buffers() if name.endswith("_mask")}


class BaselineRun:
    def __init__(self, model: nn.Module, masks: Masks | None, x: torch.Tensor, y: torch.Tensor, *, augment: bool,
                 batch_size: int, device: torch.device, seed: int):
        self.device = device
        if masks is not None:
            baseline_prune(model, tuple(masks), sum(int((~m).sum()) for m in masks.values()))
        self.model = model.to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=TRAIN.lr, momentum=TRAIN.momentum,
                                         weight_decay=TRAIN.weight_decay)
        transform = None
        if augment:
            transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()])
        dataset = TransformedTensorDataset(x, y, transform)
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0,
                                 generator=torch.Generator().manual_seed(seed))
        self.total = torch.zeros((), device=device)

    def _train(self, batches) -> int:
        self.model.train()
        n = 0
        for x, y in batches:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            loss = F.cross_entropy(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.total += loss.detach()
            n += 1
        return n

    def steps(self, n: int) -> int:
        return self._train(islice(self.loader, n))

    def epochs(self, n: int) -> int:
        return sum(self._train(self.loader) for _ in range(n))

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device))


# ---- timing -----------------------------------------------------------------------------------

def make_runs(name: str, *, device: torch.device, batch_size: int, steps_per_epoch: int, compile: bool = False,
              seed: int = 0, precision: str = "auto", bf16_row: bool = False) -> dict[str, ImpsweepRun | BaselineRun]:
    """The configurations of one model, each from the same initial weights and data.

    precision: impsweep's loop as a lineage with that `precision` runs it (auto: bf16 on CUDA,
    fp32 on CPU). bf16_row: also impsweep's masked loop with precision bf16 ("impsweep_bf16")."""
    case = CASES[name]
    x, y = synthetic_data(case.input_shape, batch_size * steps_per_epoch, seed)
    model = initial_model(name, case.input_shape, seed + 1)
    masks = impsweep_masks(model)
    common = dict(augment=case.augment, batch_size=batch_size, device=device, seed=seed + 2)
    runs = {
        "impsweep_masked": ImpsweepRun(copy.deepcopy(model), masks, x, y, steps_per_epoch=steps_per_epoch,
                                       compile=compile, precision=precision, **common),
        "impsweep_dense": ImpsweepRun(copy.deepcopy(model), {}, x, y, steps_per_epoch=steps_per_epoch,
                                      compile=compile, precision=precision, **common),
        "baseline_masked": BaselineRun(copy.deepcopy(model), masks, x, y, **common),
    }
    if bf16_row:
        runs["impsweep_bf16"] = ImpsweepRun(copy.deepcopy(model), masks, x, y, steps_per_epoch=steps_per_epoch,
                                            compile=compile, precision="bf16", **common)
    return runs


def bench_model(name: str, *, device: torch.device, steps: int, repeats: int, warmup: int, batch_size: int,
                compile: bool, seed: int = 0, precision: str = "auto", bf16_row: bool = False) -> dict:
    epochs, steps_per_epoch = epochs_for(steps)
    runs = make_runs(name, device=device, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                     compile=compile, seed=seed, precision=precision, bf16_row=bf16_row)
    masks_equal = _masks_equal(runs)
    for run in runs.values():
        run.steps(warmup)

    def check_steps(key: str, r: int, seconds: float, taken: int) -> None:
        assert taken == epochs * steps_per_epoch, (key, taken)

    times, _ = interleaved_repeats({key: lambda r, run=run: run.epochs(epochs) for key, run in runs.items()},
                                   repeats, device, rotate=True, on_repeat=check_steps)
    n_steps = epochs * steps_per_epoch
    med = {key: statistics.median(v) for key, v in times.items()}
    images = n_steps * batch_size
    imp_ips, base_ips = images / med["impsweep_masked"], images / med["baseline_masked"]
    masked_s, dense_s = med["impsweep_masked"] / n_steps, med["impsweep_dense"] / n_steps
    target = SPEEDUP_TARGETS.get(device.type, {}).get(name)
    # Medians of the per-repeat ratios: each pair was timed back to back, so a drift of the
    # machine's speed during the run (seen here at +-30%) cancels within a pair.
    paired_ratio = statistics.median(b / m for m, b in zip(times["impsweep_masked"], times["baseline_masked"]))
    paired_masked = statistics.median(m / d for m, d in zip(times["impsweep_masked"], times["impsweep_dense"]))
    bf16 = {}
    if bf16_row:
        bf16_ips = images / statistics.median(times["impsweep_bf16"])
        bf16 = {
            "bf16_images_per_s": bf16_ips,
            "bf16_ratio": bf16_ips / base_ips,
            "bf16_ratio_paired_median": statistics.median(
                b / m for m, b in zip(times["impsweep_bf16"], times["baseline_masked"])),
            "bf16_ratio_met": None if target is None else bf16_ips / base_ips >= target,
        }
    return {
        "precision": resolve_precision(precision, device),
        "input_shape": list(CASES[name].input_shape),
        "augment": CASES[name].augment,
        "sparsity": SPARSITY,
        "masks_equal": masks_equal,
        "batch_size": batch_size,
        "steps": n_steps,
        "epochs_per_repeat": epochs,
        "warmup_steps": warmup,
        "repeats": repeats,
        "impsweep_images_per_s": imp_ips,
        "baseline_images_per_s": base_ips,
        "ratio": imp_ips / base_ips,
        "masked_step_s": masked_s,
        "dense_step_s": dense_s,
        "masked_over_dense": masked_s / dense_s,
        "ratio_paired_median": paired_ratio,
        "masked_over_dense_paired_median": paired_masked,
        "baseline_step_s": med["baseline_masked"] / n_steps,
        **bf16,
        "repeat_seconds": times,
        "targets": {
            "ratio_min": target,
            "ratio_met": None if target is None else imp_ips / base_ips >= target,
            "masked_over_dense_max": MASKED_OVER_DENSE_MAX,
            "masked_over_dense_met": masked_s / dense_s <= MASKED_OVER_DENSE_MAX,
        },
    }


def _masks_equal(runs) -> bool:
    """Whether torch's global_unstructured picked exactly impsweep's weights."""
    ours = runs["impsweep_masked"].masks
    theirs = baseline_masks(runs["baseline_masked"].model)
    return ours.keys() == theirs.keys() and all(torch.equal(ours[n].cpu(), theirs[n].cpu()) for n in ours)


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# ---- report -----------------------------------------------------------------------------------

def table(results: dict) -> str:
    head = (f"{'model':<14} {'precision':<9} {'B':>4} {'steps':>5} {'impsweep img/s':>15} {'baseline img/s':>15} "
            f"{'ratio':>6} {'target':>6} {'masked/dense':>12} {'<=1.10':>6} {'paired ratio':>12} {'paired m/d':>10}")
    lines = [head, "-" * len(head)]

    def target(r: dict, met: bool | None) -> str:
        t = r["targets"]["ratio_min"]
        return "-" if t is None else f"{t:.1f}x" + ("" if met else "!")

    for name, r in results["models"].items():
        t = r["targets"]
        lines.append(
            f"{name:<14} {r['precision']:<9} {r['batch_size']:>4} {r['steps']:>5} {r['impsweep_images_per_s']:>15.0f} "
            f"{r['baseline_images_per_s']:>15.0f} {r['ratio']:>5.2f}x {target(r, t['ratio_met']):>6} "
            f"{r['masked_over_dense']:>12.3f} {'yes' if t['masked_over_dense_met'] else 'NO':>6} "
            f"{r['ratio_paired_median']:>11.2f}x {r['masked_over_dense_paired_median']:>10.3f}"
        )
        if "bf16_ratio" in r:
            lines.append(
                f"{name:<14} {'bf16':<9} {r['batch_size']:>4} {r['steps']:>5} {r['bf16_images_per_s']:>15.0f} "
                f"{r['baseline_images_per_s']:>15.0f} {r['bf16_ratio']:>5.2f}x {target(r, r['bf16_ratio_met']):>6} "
                f"{'':>12} {'':>6} {r['bf16_ratio_paired_median']:>11.2f}x"
            )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p, names="models", known=list(CASES), repeats_help="timed repeats (median reported)",
                         quick_help="a few tiny steps: a smoke test, not a measurement",
                         out_default="benchmarks/results/train-<device>.json")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per timed repeat, rounded to whole epochs (default: per model and device)")
    p.add_argument("--batch-size", type=int, default=TRAIN.batch_size)
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps of every configuration")
    p.add_argument("--compile", action="store_true", help="torch.compile impsweep's forward (as spec.compile)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="impsweep's loop as a lineage with this precision runs it (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--bf16-row", choices=("auto", "yes", "no"), default="auto",
                   help="also time impsweep's masked loop in bf16 (auto: on a CPU with native bf16 when "
                        "--precision resolves to fp32)")
    args = p.parse_args(argv)
    check_common_arguments(p, args, names="models", known=list(CASES))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    batch_size = QUICK["batch_size"] if args.quick and args.batch_size == TRAIN.batch_size else args.batch_size
    session = Session()
    precision = resolve_precision(args.precision, device)
    bf16_row = args.bf16_row == "yes" or (
        args.bf16_row == "auto" and precision == "fp32" and device.type == "cpu" and native_cpu_bf16())
    models = {}
    for name in args.models:
        case = CASES[name]
        if args.quick:
            steps, repeats, warmup = QUICK["steps"], QUICK["repeats"], QUICK["warmup"]
        else:
            steps = args.steps or (case.cuda_steps if device.type == "cuda" else case.cpu_steps)
            repeats = args.repeats or (case.cuda_repeats if device.type == "cuda" else case.cpu_repeats)
            warmup = args.warmup
        models[name] = bench_model(name, device=device, steps=steps, repeats=repeats, warmup=warmup,
                                   batch_size=batch_size, compile=args.compile, precision=args.precision,
                                   bf16_row=bf16_row)
        row = models[name]
        bf16 = f", bf16 {row['bf16_ratio']:.2f}x" if bf16_row else ""
        print(f"{name}: {row['ratio']:.2f}x{bf16}, masked/dense {row['masked_over_dense']:.3f} "
              f"({session.elapsed_s():.0f} s, load average {loadavg()})", flush=True)
    results = {
        "benchmark": "train",
        **session.facts(device),
        "torchvision": torchvision.__version__,
        "quick": args.quick,
        "compile": args.compile,
        "impsweep_precision": ("bf16 autocast" if precision == "bf16" else "fp32") + ", channels_last for conv models",
        "bf16_row": bf16_row,
        "native_cpu_bf16": native_cpu_bf16(),
        "baseline_precision": "fp32",
        "train": {"optimizer": "sgd", "lr": TRAIN.lr, "momentum": TRAIN.momentum, "weight_decay": TRAIN.weight_decay},
        "contended": contended(session.loadavg_before, torch.get_num_threads()),
        "models": models,
    }
    out = write_results(results, Path(args.out) if args.out else ROOT / "benchmarks" / "results"
                        / f"train-{args.device}.json")
    print(table(results))
    if results["contended"]:
        print("WARNING: the machine was loaded when this run started; re-run it on a quiet machine.")
    print(f"wall {results['wall_s']} s, load average {session.loadavg_before} -> {results['loadavg_after']}; "
          f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
