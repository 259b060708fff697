"""The benchmarks' shared harness: synchronised timing, interleaved repeats, the command line
they have in common, and the facts about the machine and the run that every result file records.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a CPU has nothing queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """(wall seconds, result) of `fn()`, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - t0, result


def interleaved_repeats(
    configs: Mapping[str, Callable[[int], T]],
    repeats: int,
    device: torch.device,
    *,
    rotate: bool = False,
    on_repeat: Callable[[str, int, float, T], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, T]]:
    """Time every configuration `repeats` times, the configurations of one repeat back to back,
    so that a change in machine load hits all of them alike.

    configs: name -> function of the repeat index, timed by `timed`.
    rotate: each repeat starts one configuration later (so that no configuration always runs first).
    on_repeat: called with (name, repeat, seconds, result) after each timed call.
    Returns (seconds of every repeat by name, the last result by name).
    """
    times: dict[str, list[float]] = {name: [] for name in configs}
    last: dict[str, T] = {}
    names = list(configs)
    for r in range(repeats):
        shift = r % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            seconds, last[name] = timed(lambda: configs[name](r), device)
            times[name].append(seconds)
            if on_repeat is not None:
                on_repeat(name, r, seconds, last[name])
    return times, last


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


def loadavg() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages, or None where the system has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def contended(load: list[float] | None, threads: int) -> bool | None:
    """Whether other work competed for the CPUs when the run started (1-minute load > CPUs):
    then the timings say more about the machine's load than about the code measured."""
    if load is None:
        return None
    return load[0] > max(os.cpu_count() or 1, threads)


def code_rev(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class Session:
    """One benchmark run: when it started and how loaded the machine was then."""

    started: float = field(default_factory=time.perf_counter)
    loadavg_before: list[float] | None = field(default_factory=loadavg)

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def facts(self, device: torch.device) -> dict[str, Any]:
        """What every result file records about the machine and the run, taken now."""
        return {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device.type,
            "device_name": device_name(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "loadavg_before": self.loadavg_before,
            "loadavg_after": loadavg(),
            "wall_s": round(self.elapsed_s(), 1),
        }


def add_common_arguments(parser: argparse.ArgumentParser, *, names: str, known: Sequence[str],
                         repeats_help: str, quick_help: str, out_default: str) -> None:
    """--device, --<names> (a comma-separated subset of `known`), --repeats, --quick, --out."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(f"--{names}", default=",".join(known), help="comma-separated, of " + ", ".join(known))
    parser.add_argument("--repeats", type=int, default=None, help=repeats_help)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", default=None, help=f"JSON path (default {out_default})")


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, *, names: str,
                           known: Sequence[str]) -> None:
    """Split `args.<names>` into a list; exit with a usage error on an unknown name or a missing GPU."""
    chosen = [n.strip() for n in getattr(args, names).split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown:
        parser.error(f"unknown {names} {unknown}; expected some of {list(known)}")
    setattr(args, names, chosen)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")


def write_results(results: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path
