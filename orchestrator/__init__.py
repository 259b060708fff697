"""Sweeps of IMP lineages on Ray Tune, recorded in MLflow; the `impsweep` command line."""
from orchestrator.launch import SweepOutcome, run_sweep
from orchestrator.plan import LineagePlan, plan_sweep
from orchestrator.specs import SpecError, SweepSpec, load_sweep

__all__ = ["LineagePlan", "SpecError", "SweepOutcome", "SweepSpec", "load_sweep", "plan_sweep", "run_sweep"]
