"""DAVIS evaluation: region similarity J, boundary F-measure F and their statistics, per frame,
per sequence and over folders of PNG masks, faithful to the official DAVIS 2016/2017 toolkit.

>>> import numpy as np
>>> from vidseg.evaluation import region_similarity
>>> a = np.zeros((10, 10), bool); a[2:6, 2:6] = True
>>> region_similarity(a, a)
1.0
"""

from vidseg.evaluation.clicks import next_click
from vidseg.evaluation.davis import (
    EvaluationReport,
    ObjectScores,
    SequenceScores,
    evaluate_directories,
    evaluate_sequence,
    read_mask,
)
from vidseg.evaluation.errors import EvaluationError
from vidseg.evaluation.metrics import (
    DEFAULT_BOUND_TH,
    Statistics,
    boundary_f_measure,
    boundary_tolerance,
    davis_statistics,
    decay_bins,
    region_similarity,
    seg2bmap,
)

__all__ = [
    "DEFAULT_BOUND_TH",
    "EvaluationError",
    "EvaluationReport",
    "next_click",
    "ObjectScores",
    "SequenceScores",
    "Statistics",
    "boundary_f_measure",
    "boundary_tolerance",
    "davis_statistics",
    "decay_bins",
    "evaluate_directories",
    "evaluate_sequence",
    "read_mask",
    "region_similarity",
    "seg2bmap",
]
