"""Layer-similarity measures (SIMILARITY.md): one pair with `similarity`, all pairs with
`pairwise`, metadata of every measure in `MEASURES`. Callers that keep sketches between calls
(the analysis pipeline) use `sketch_spec` and `sketch` per representation and
`pairwise_sketches` per tile of pairs."""

from analysis.similarity.api import (PairwiseResult, SketchSpec, pairwise, pairwise_sketches,
                                     similarity, sketch, sketch_spec)
from analysis.similarity.forms import cka_form
from analysis.similarity.registry import MEASURES, MeasureInfo, resolve_conv
from analysis.similarity.sketch import Sketch, from_payload, sketch_bytes, to_payload

__all__ = ["MEASURES", "MeasureInfo", "PairwiseResult", "Sketch", "SketchSpec", "cka_form",
           "from_payload", "pairwise", "pairwise_sketches", "resolve_conv", "similarity",
           "sketch", "sketch_bytes", "sketch_spec", "to_payload"]
