"""threecad.metrics: exact and streaming anomaly-detection metrics, both protocols.

Functions (exact, on arrays in memory): pixel_auroc, pixel_ap, pixel_f1max, au_pro,
image_auroc, image_ap, image_f1max, f1_max.  Accumulator: Evaluator (keys of its
compute() are documented in threecad.metrics.evaluator).

Modules, one concept each: inputs (array checks), regions (8-connected defect regions),
curves (metrics read off score tie-groups, streaming error bounds), exact (one ordering
of all pixels), bounded (exact mode within a memory budget), runs (normal scores as
sorted runs spilled to disk), chunked (curves' and scikit-learn's metrics of levels given
in pieces, to the last bit), streaming (fixed-memory float-bit histogram), protocols
(standard and 3cad-paper), functional (one-call metrics), evaluator (the accumulator).
"""
from threecad.metrics.bounded import DEFAULT_MEMORY
from threecad.metrics.curves import UndefinedMetric
from threecad.metrics.evaluator import Evaluator, EvaluatorConfig
from threecad.metrics.functional import (au_pro, f1_max, image_ap, image_auroc, image_f1max, pixel_ap,
                                         pixel_auroc, pixel_f1max)
from threecad.metrics.protocols import PROTOCOLS, paper_category_mean

__all__ = [
    "Evaluator", "EvaluatorConfig", "DEFAULT_MEMORY", "UndefinedMetric", "PROTOCOLS", "paper_category_mean",
    "pixel_auroc", "pixel_ap", "pixel_f1max", "au_pro", "image_auroc", "image_ap", "image_f1max", "f1_max",
]
