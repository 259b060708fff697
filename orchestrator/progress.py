"""Progress of a running sweep on the console: lineages done / running / failed, levels done."""
from __future__ import annotations

from collections.abc import Callable

from ray.tune import Callback

from orchestrator.stops import stopped_after


class ProgressCallback(Callback):
    """One line per level result, per epoch report of a long level, and per finished or failed
    lineage."""

    def __init__(self, echo: Callable[[str], None], *, expected: int, workdir: str):
        self.echo = echo
        self.workdir = workdir
        self.expected = expected  # lineages this run will have run, when it is over
        self.levels: dict[str, tuple[int, int]] = {}  # lineage id -> (levels done, levels in all)
        self.trials: dict[str, set[str]] = {}  # trial id -> its lineages (several when fused)
        self.finished: set[str] = set()  # lineage ids
        self.failed: set[str] = set()

    def _counts(self) -> str:
        running = len(self.levels) - len(self.finished) - len(self.failed & set(self.levels))
        done = sum(d for d, _ in self.levels.values())
        known = sum(n for _, n in self.levels.values())
        return (f"[{len(self.finished)}/{self.expected} done, {running} running, {len(self.failed)} failed; "
                f"levels {done}/{known}+]")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        lineage = result["lineage_id"]
        self.trials.setdefault(trial.trial_id, set()).add(lineage)
        self.levels[lineage] = (int(result["level"]) + 1, int(result["n_levels"]))
        if result.get("kind") == "epoch":  # a long level's progress, not a finished level
            self.echo(f"{self._counts()} {lineage} L{int(result['training_level']):02d} "
                      f"epoch {int(result['training_epoch'])}")
            return
        how = "read back" if result.get("resumed") else f"{result['wall_s']:.1f}s"
        self.echo(f"{self._counts()} {result['lineage_id']} L{int(result['level']):02d}: "
                  f"sparsity {result['sparsity']:.3f} test_acc {result['test_acc']:.4f} ({how})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished |= self.trials.get(trial.trial_id, {trial.trial_id})
        level = stopped_after(trial.last_result, self.workdir)
        how = "finished" if level is None else f"stopped by the scheduler after L{level:02d}"
        self.echo(f"{self._counts()} {trial.custom_dirname or trial.trial_id} {how}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed |= self.trials.get(trial.trial_id, {trial.trial_id})
        self.echo(f"{self._counts()} {trial.custom_dirname or trial.trial_id} FAILED: see {trial.local_path}")
