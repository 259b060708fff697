"""Storage benchmark: what the workdir's store costs a lineage, per level, on an object store
against a local disk.

One lineage (`lenet_300_100` on digits, 1 epoch a level, a progress checkpoint each epoch) runs
end to end by `run_lineage` with its workdir on the local disk and on an S3-compatible server:
by default a moto server this script starts on 127.0.0.1 (`AWS_ENDPOINT_URL` and credentials
set for it), or the bucket named by `--bucket` with the caller's own AWS environment. Repeats
of the two are interleaved, each in a fresh workdir, and the median is reported: seconds per
level and the difference (the storage layer's overhead per level), and the parts of one level
timed alone: committing a level (state.pt, metrics.json, spec.json and, on S3, the marker) and
reading it back (`load_checkpoint`). moto on the same machine has no network latency: against a
real bucket the per-request latency (tens of ms) adds to every request.

Writes benchmarks/results/storage-cpu.json and prints a table.

    python benchmarks/storage_bench.py [--repeats R] [--levels L] [--bucket NAME] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._timing import Session, code_rev, interleaved_repeats, write_results  # noqa: E402
from trainables import LineageSpec, load_checkpoint, run_lineage  # noqa: E402
from trainables.checkpoints import LevelProgress, LevelRecord, LineageCheckpoints  # noqa: E402
from trainables.storage import open_store  # noqa: E402

CPU = torch.device("cpu")


def spec(levels: int) -> LineageSpec:
    return LineageSpec.model_validate({
        "model": "lenet_300_100", "dataset": "digits",
        "train": {"lr": 0.05, "batch_size": 128, "epochs": 2}, "checkpoint_every_epochs": 1,
        "prune": {"rate": 0.2, "levels": levels, "exclude": ["bias"]},
    })


@contextmanager
def moto_bucket() -> Iterator[str]:
    """A moto server on 127.0.0.1 with a bucket; the environment pointing boto3 at it."""
    import socket

    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_ENDPOINT_URL")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(os.environ["AWS_ENDPOINT_URL"], timeout=2).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        boto3.client("s3").create_bucket(Bucket="impsweep-bench")
        yield "impsweep-bench"
    finally:
        server.terminate()
        server.wait(timeout=15)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def level_parts(workdir: str, repeats: int) -> dict[str, float]:
    """Median seconds to commit one trained LeNet level and to read it back."""
    trained = run_lineage(spec(0), workdir=workdir)
    level = load_checkpoint(trained.levels[0].checkpoint_dir)
    commit, read = [], []
    for r in range(repeats):
        store = LineageCheckpoints(workdir, f"copy{r}-s0")
        store.store.write_json(f"lineages/copy{r}-s0/spec.json", {"spec": {}})
        progress = LevelProgress(0, level.masks, epoch=2, step=24, train_losses=[1.0, 0.5])
        record = LevelRecord(level.metrics["metrics"], (), "fp32")
        t0 = time.perf_counter()
        path = store.save_level(progress, model_state=level.model, fused=False, record=record)
        commit.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        load_checkpoint(path)
        read.append(time.perf_counter() - t0)
    return {"commit_level_s": statistics.median(commit), "read_level_s": statistics.median(read),
            "state_bytes": len(open_store(trained.levels[0].checkpoint_dir).read_bytes("state.pt"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--levels", type=int, default=3, help="pruned levels after the dense one")
    parser.add_argument("--bucket", default=None, help="a real bucket (AWS_* from the environment) instead of moto")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 1 pruned level (a smoke run)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/storage-cpu.json)")
    args = parser.parse_args()
    repeats, levels = (2, 1) if args.quick else (args.repeats, args.levels)
    session = Session()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp, (moto_bucket() if args.bucket is None else _given(args.bucket)) as bucket:
        prefix = f"s3://{bucket}/storage-bench-{uuid.uuid4().hex[:8]}"
        roots = {"local": lambda r: f"{tmp}/local{r}", "s3": lambda r: f"{prefix}/run{r}"}
        run_lineage(spec(0), workdir=f"{tmp}/warm")  # data and model code loaded before timing
        times, _ = interleaved_repeats({name: (lambda r, root=root: run_lineage(spec(levels), workdir=root(r)))
                                        for name, root in roots.items()}, repeats, CPU, rotate=True)
        parts = {"local": level_parts(f"{tmp}/parts", repeats), "s3": level_parts(f"{prefix}/parts", repeats)}
    per_level = {name: statistics.median(t) / (levels + 1) for name, t in times.items()}
    results = {
        "benchmark": "storage", "server": "moto on 127.0.0.1" if args.bucket is None else f"s3://{args.bucket}",
        "lineage": "lenet_300_100 on digits, 2 epochs a level, a progress checkpoint per epoch",
        "levels": levels + 1, "repeats": repeats, "code_rev": code_rev(ROOT),
        "seconds_per_level": per_level, "overhead_per_level_s": per_level["s3"] - per_level["local"],
        "ratio_s3_over_local": per_level["s3"] / per_level["local"], "level_parts": parts,
        "runs_s": times, **session.facts(CPU),
    }
    out = write_results(results, Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "storage-cpu.json")
    print(f"seconds per level: local {per_level['local']:.3f}, s3 {per_level['s3']:.3f} "
          f"(overhead {results['overhead_per_level_s'] * 1e3:.0f} ms, {results['ratio_s3_over_local']:.2f}x)")
    for name, p in parts.items():
        print(f"{name}: commit a level {p['commit_level_s'] * 1e3:.1f} ms, read it {p['read_level_s'] * 1e3:.1f} ms "
              f"(state.pt {p['state_bytes'] / 1e6:.2f} MB)")
    print(f"wrote {out}")


@contextmanager
def _given(bucket: str) -> Iterator[str]:
    yield bucket


if __name__ == "__main__":
    main()
