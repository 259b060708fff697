"""Progress of a running sweep on the console: lineages done / running / failed, levels done."""
from __future__ import annotations

from collections.abc import Callable

from ray.tune import Callback


class ProgressCallback(Callback):
    """One line per level result and per finished or failed lineage."""

    def __init__(self, echo: Callable[[str], None], n_levels: dict[str, int]):
        self.echo = echo
        self.n_levels = n_levels
        self.levels_done: dict[str, int] = {}
        self.finished: set[str] = set()
        self.failed: set[str] = set()

    @staticmethod
    def _lineage(trial) -> str:
        return trial.config["lineage"]["lineage_id"]

    def _counts(self) -> str:
        total = len(self.n_levels)
        levels = sum(self.levels_done.values())
        all_levels = sum(self.n_levels.values())
        running = total - len(self.finished) - len(self.failed)
        return (f"[{len(self.finished)}/{total} done, {running} running, {len(self.failed)} failed; "
                f"levels {levels}/{all_levels}]")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        lid = self._lineage(trial)
        self.levels_done[lid] = max(self.levels_done.get(lid, 0), int(result["level"]) + 1)
        how = "read back" if result.get("resumed") else f"{result['wall_s']:.1f}s"
        self.echo(f"{self._counts()} {lid} L{int(result['level']):02d}: sparsity {result['sparsity']:.3f} "
                  f"test_acc {result['test_acc']:.4f} ({how})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished.add(self._lineage(trial))
        self.echo(f"{self._counts()} {self._lineage(trial)} finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed.add(self._lineage(trial))
        self.echo(f"{self._counts()} {self._lineage(trial)} FAILED: see {trial.local_path}")
