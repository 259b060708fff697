"""Analysis of a sweep's checkpoints: activations, all-pairs layer similarity, Parquet tables.

Kept light to import: `analysis.similarity` is usable on its own, and the Ray Data pipeline is
imported only by what runs it.
"""
from analysis.specs import AnalysisSpec, analysis_id

__all__ = ["AnalysisSpec", "analysis_id", "run_analysis", "scan_tables"]


def __getattr__(name: str):
    # The pipeline pulls in Ray, MLflow and torch: load it on first use, not on import.
    if name == "run_analysis":
        from analysis.pipeline import run_analysis

        return run_analysis
    if name == "scan_tables":
        from analysis.tables import scan_tables

        return scan_tables
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
