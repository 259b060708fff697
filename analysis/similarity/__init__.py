"""Layer-similarity measures (SIMILARITY.md): one pair with `similarity`, all pairs with
`pairwise`, metadata of every measure in `MEASURES`."""

from analysis.similarity.api import PairwiseResult, pairwise, similarity
from analysis.similarity.registry import MEASURES, MeasureInfo, resolve_conv

__all__ = ["MEASURES", "MeasureInfo", "PairwiseResult", "pairwise", "resolve_conv",
           "similarity"]
