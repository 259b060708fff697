"""Per-pair decompositions on CPU: single-threaded LAPACK calls spread over the cores.

Multi-threaded LAPACK on a [p, p] block gains little and, on a busy machine, its threads
spin against each other (a 256 x 256 eigensolve measured 100x slower); one thread per call
with the batch split over a thread pool (torch releases the GIL) is fast and robust. The
same holds for numpy's BLAS (see spectra.cpu_backend): its threads are limited to one
per call inside the pool."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from typing import Callable, Iterator, Sequence, TypeVar

import torch
from threadpoolctl import ThreadpoolController

T = TypeVar("T")


@cache
def _blas_pools() -> ThreadpoolController:
    """The BLAS libraries loaded now (found once: a scan costs milliseconds)."""
    return ThreadpoolController()


@contextmanager
def _one_intra_op_thread() -> Iterator[int]:
    """Set torch's intra-op threads and numpy's BLAS threads to 1 for the duration; yields
    torch's previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _blas_pools().limit(limits=1, user_api="blas"):
            yield previous
    finally:
        torch.set_num_threads(previous)


def map_chunks(fn: Callable[[int, int], T], count: int, *, device: torch.device) -> list[T]:
    """[fn(start, stop) for consecutive chunks of range(count)], on CPU one chunk per core.

    fn must only read shared state; chunks keep their order in the result."""
    if device.type != "cpu":
        return [fn(0, count)]
    if count < 2 or torch.get_num_threads() < 2:
        # numpy's BLAS follows torch's thread count here too (a one-CPU tile actor)
        with _blas_pools().limit(limits=torch.get_num_threads(), user_api="blas"):
            return [fn(0, count)]
    with _one_intra_op_thread() as workers:
        bounds = _bounds(count, min(workers, count))
        with ThreadPoolExecutor(max_workers=len(bounds)) as pool:
            return list(pool.map(lambda b: fn(*b), bounds))


def _bounds(count: int, parts: int) -> Sequence[tuple[int, int]]:
    edges = [round(k * count / parts) for k in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]
