"""Benchmark of analysis.similarity.pairwise against a per-pair loop of the fastest
straightforward per-pair formulation of each measure (feature-space CKA, one SVD/CCA per pair
as the reference implementations do).

Writes benchmarks/results/similarity-<device>.json and prints a table. Sizes: small (M=24
representations, n=2000 x p=256, all pairs in both), large (M=200, n=1000 x p=512, the loop
timed on a seeded sample of pairs and scaled; pairwise of the per-pair-bound measures timed
on a --block x --block rectangle of pairs and scaled unless --block 0), gpu (M=1000,
n=1000 x p=512, CUDA only).

    python benchmarks/similarity_bench.py [--device cpu|cuda] [--sizes small,large]
                                          [--measures linear_cka,...] [--loop-pairs 12] [--threads N]
                                          [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.similarity import MEASURES, pairwise  # noqa: E402
from analysis.similarity.spectra import cpu_backend  # noqa: E402

SIZES = {"small": (24, 2000, 256), "large": (200, 1000, 512), "gpu": (1000, 1000, 512)}
EPS = torch.finfo(torch.float64).eps


def make_representations(count: int, n: int, p: int, device: torch.device,
                         seed: int = 0) -> list[torch.Tensor]:
    """Layers of a shared low-rank signal plus noise, ReLU'd so that some units die."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 64, generator=gen, dtype=torch.float64)
    reps = []
    for _ in range(count):
        mix = torch.randn(64, p, generator=gen, dtype=torch.float64)
        noise = torch.randn(n, p, generator=gen, dtype=torch.float64)
        reps.append(torch.relu(base @ mix + 4.0 * noise + 1.0).to(device))
    return reps


# ---- per-pair baselines: each one pair, from the raw matrices, nothing cached ----

def _centre(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=0)


def _basis(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(_centre(x), full_matrices=False)
    rank = int((s > max(x.shape) * EPS * s[0]).sum())
    return u[:, :rank], s[:rank], vh[:rank]


def loop_linear_cka(x, y):
    x, y = _centre(x), _centre(y)
    return (torch.linalg.matrix_norm(y.T @ x) ** 2
            / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)))


def _debiased_dot(xty_sq, x, y, n):
    rx, ry = (x * x).sum(1), (y * y).sum(1)
    return (xty_sq - n / (n - 2) * rx @ ry + rx.sum() * ry.sum() / ((n - 1) * (n - 2)))


def loop_linear_cka_debiased(x, y):
    x, y = _centre(x), _centre(y)
    n = x.shape[0]
    xy = _debiased_dot(torch.linalg.matrix_norm(y.T @ x) ** 2, x, y, n)
    xx = _debiased_dot(torch.linalg.matrix_norm(x.T @ x) ** 2, x, x, n)
    yy = _debiased_dot(torch.linalg.matrix_norm(y.T @ y) ** 2, y, y, n)
    return xy / (xx * yy).sqrt()


def _hsic1(k, l):
    n = k.shape[0]
    k, l = k.clone(), l.clone()
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    ones = torch.ones(n, dtype=k.dtype)
    kl = (k * l).sum()
    return (kl + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (ones @ k) @ (l @ ones)) / (n * (n - 3))


def loop_linear_cka_minibatch(x, y, batch_size=256):
    sums = torch.zeros(3, dtype=torch.float64)
    for start in range(0, x.shape[0], batch_size):
        a, b = x[start:start + batch_size], y[start:start + batch_size]
        if a.shape[0] >= 4:
            k, l = a @ a.T, b @ b.T
            sums += torch.stack([_hsic1(k, l), _hsic1(k, k), _hsic1(l, l)])
    return sums[0] / (sums[1] * sums[2]).sqrt()


def _rbf(x, threshold=0.8):
    x = _centre(x)
    sq = (x * x).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    dist.fill_diagonal_(0)
    flat = dist.reshape(-1)
    half = flat.numel() // 2  # n^2 entries: numpy's median of an even count
    median = (torch.kthvalue(flat, half).values + torch.kthvalue(flat, half + 1).values) / 2
    k = torch.exp(-dist / (2 * threshold ** 2 * median))
    return k - k.mean(0)[:, None] - k.mean(0)[None, :] + k.mean()


def loop_rbf_cka(x, y):
    k, l = _rbf(x), _rbf(y)
    return (k * l).sum() / (k.norm() * l.norm())


def loop_mean_cca(x, y):
    return torch.linalg.svdvals(_basis(x)[0].T @ _basis(y)[0]).mean()


def loop_mean_cca_sq(x, y):
    c = _basis(x)[0].T @ _basis(y)[0]
    return (c * c).sum() / min(c.shape)


def loop_svcca(x, y, variance=0.99):
    def reduced(z):
        u, s, _ = _basis(z)
        energy = torch.cumsum(s * s, 0)
        return u[:, :int((energy < variance * energy[-1]).sum()) + 1]
    return torch.linalg.svdvals(reduced(x).T @ reduced(y)).mean()


def loop_pwcca(x, y):
    (ux, sx, vx), (uy, sy, vy) = _basis(x), _basis(y)
    a, rho, bh = torch.linalg.svd(ux.T @ uy, full_matrices=False)
    vectors, s, vh = (a, sx, vx) if ux.shape[1] <= uy.shape[1] else (bh.T, sy, vy)
    projections = vectors.T @ (s[:, None] * vh)
    alpha = projections.abs().sum(1)
    start = 0
    for i in range(1, len(rho) + 1):  # tied correlations: principal axes of the projections
        if i == len(rho) or abs(rho[i - 1] - rho[i]) > 1e-8:
            if i - start > 1:
                _, values, right_h = torch.linalg.svd(projections[start:i], full_matrices=False)
                alpha[start:i] = (values[:, None] * right_h).abs().sum(1)
            start = i
    return (alpha * rho).sum() / alpha.sum()


def loop_pwcca_google(x, y):
    """google/svcca's covariance path: whitening by inverse square roots, one SVD, the
    unwhitened rotation plus neuron means, a QR in example space."""
    n = x.shape[0]
    xc, yc = _centre(x), _centre(y)

    def inv_sqrt(cov):
        w, v = torch.linalg.eigh(cov)
        keep = w > w.max() * max(cov.shape) * EPS
        return (v[:, keep] / w[keep].sqrt()) @ v[:, keep].T
    sxx, syy, sxy = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1), xc.T @ yc / (n - 1)
    rank_x = torch.linalg.matrix_rank(xc)
    rank_y = torch.linalg.matrix_rank(yc)
    u, rho, vh = torch.linalg.svd(inv_sqrt(sxx) @ sxy @ inv_sqrt(syy))
    k = int(min(rank_x, rank_y))
    acts, centred, dirs = (x, xc, u) if x.shape[1] <= y.shape[1] else (y, yc, vh.T)
    means = acts.mean(0)
    dirs = dirs[:, :k] * torch.where(dirs[:, :k].sum(0) >= 0, 1.0, -1.0)
    dirns = centred @ dirs + means[:k]
    q, _ = torch.linalg.qr(dirns)
    weights = (q.T @ acts).abs().sum(1)
    return (weights * rho[:k]).sum() / weights.sum()


def loop_nbs(x, y):
    x, y = _centre(x), _centre(y)
    return torch.linalg.matrix_norm(x.T @ y, "nuc") / (x.norm() * y.norm())


def loop_procrustes(x, y):
    return torch.arccos(loop_nbs(x, y).clamp(0, 1))


LOOPS = {name: globals()[f"loop_{name}"] for name in MEASURES}


# Measures whose per-pair cost is an SVD-sized decomposition of a [p, p] block: at the large
# size their full all-pairs run takes tens of minutes on 2 cores, so by default `pairwise` is
# timed on a rectangular block of pairs and scaled (see --block).
PER_PAIR_BOUND = ("mean_cca", "svcca", "pwcca", "pwcca_google", "nbs", "procrustes")


def time_pairwise(name: str, reps: list[torch.Tensor], total_pairs: int, block: int,
                  device: torch.device) -> tuple[torch.Tensor, float, int, list[int]]:
    """(values, seconds scaled to all pairs, pairs timed, row indices of `values`)."""
    if block and name in PER_PAIR_BOUND and 2 * block < len(reps):
        rows, cols = list(range(block)), list(range(block, 2 * block))
        start = time.perf_counter()
        result = pairwise([reps[i] for i in rows], [reps[j] for j in cols], measure=name,
                          device=device)
        seconds = time.perf_counter() - start
        full = torch.full((len(reps), len(reps)), float("nan"), dtype=torch.float64)
        full[:block, block:2 * block] = result.values
        return full, seconds * total_pairs / block ** 2, block ** 2, cols
    start = time.perf_counter()
    result = pairwise(reps, measure=name, device=device)
    return result.values, time.perf_counter() - start, total_pairs, list(range(len(reps)))


def bench_measure(name: str, reps: list[torch.Tensor], loop_pairs: list[tuple[int, int]],
                  total_pairs: int, device: torch.device, block: int = 0, rounds: int = 1) -> dict:
    """Both sides timed `rounds` times, alternately, so that a drift of the machine's speed
    (this 2-core machine's per-pair times drift by up to 1.6x within a minute) hits both;
    seconds are medians over the rounds and the ratio is theirs."""
    pairwise_times, loop_times = [], []
    values = loop_values = None
    for _ in range(rounds):
        values, pairwise_s, pairwise_timed, _ = time_pairwise(name, reps, total_pairs, block,
                                                              device)
        pairwise_times.append(pairwise_s)
        if pairwise_timed < total_pairs:
            in_block = [(i, j) for i in range(block) for j in range(block, 2 * block)]
            loop_pairs = random.Random(0).sample(in_block, min(len(loop_pairs), len(in_block)))
        cpu_reps = [r.cpu() for r in reps]
        start = time.perf_counter()
        loop_values = [float(LOOPS[name](cpu_reps[i], cpu_reps[j])) for i, j in loop_pairs]
        loop_times.append((time.perf_counter() - start) * total_pairs / len(loop_pairs))
    pairwise_s, loop_s = statistics.median(pairwise_times), statistics.median(loop_times)
    diffs = [abs(values[i, j].item() - v) for (i, j), v in zip(loop_pairs, loop_values)
             if not math.isnan(v)]
    return {"measure": name, "pairs": total_pairs, "loop_pairs_timed": len(loop_pairs),
            "pairwise_pairs_timed": pairwise_timed, "rounds": rounds,
            "pairwise_s": pairwise_s, "loop_s": loop_s,
            "pairwise_s_rounds": pairwise_times, "loop_s_rounds": loop_times,
            "pairwise_pairs_per_s": total_pairs / pairwise_s,
            "loop_pairs_per_s": total_pairs / loop_s, "ratio": loop_s / pairwise_s,
            "max_abs_diff": max(diffs) if diffs else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="small,large")
    parser.add_argument("--measures", default=",".join(MEASURES))
    parser.add_argument("--loop-pairs", type=int, default=12,
                        help="pairs timed in the per-pair loop when not all are timed")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for both sides (default: torch's)")
    parser.add_argument("--block", type=int, default=24,
                        help="large sizes: time pairwise for the per-pair-bound measures on "
                        "a block x block rectangle of pairs and scale; 0 runs all pairs")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating timings of both sides per measure (medians reported)")
    parser.add_argument("--out", default=None, help="results file (default: "
                        "benchmarks/results/similarity-<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    out = Path(args.out) if args.out else (Path(__file__).parent / "results"
                                           / f"similarity-{device.type}.json")
    results = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    results.update({"device": device.type, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu_lapack": cpu_backend(), "machine": platform.processor()
                    or platform.machine()})
    for size in args.sizes.split(","):
        count, n, p = SIZES[size]
        reps = make_representations(count, n, p, device)
        all_pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
        sample = all_pairs if size == "small" else random.Random(0).sample(
            all_pairs, min(args.loop_pairs, len(all_pairs)))
        rows = results["runs"].setdefault(size, {})
        print(f"\n{size}: M={count} n={n} p={p} ({len(all_pairs)} pairs; loop over "
              f"{len(sample)} pairs)")
        print(f"{'measure':22s} {'pairwise s':>11s} {'loop s':>10s} {'ratio':>8s} "
              f"{'pairs/s':>10s} {'max|diff|':>10s}")
        for name in args.measures.split(","):
            block = 0 if size == "small" else args.block
            row = bench_measure(name, reps, sample, len(all_pairs), device, block, args.rounds)
            row.update({"M": count, "n": n, "p": p})
            rows[name] = row
            diff = "-" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.1e}"
            print(f"{name:22s} {row['pairwise_s']:11.2f} {row['loop_s']:10.2f} "
                  f"{row['ratio']:8.1f} {row['pairwise_pairs_per_s']:10.1f} {diff:>10s}",
                  flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
