"""Per-frame DAVIS measures (J: region similarity, F: boundary F-measure) and the per-object
statistics (mean, recall, decay), following the official DAVIS 2016/2017 evaluation toolkit
(``davis2017-evaluation``: ``db_eval_iou``, ``db_eval_boundary``, ``db_statistics``).

Masks are 2-D arrays; any non-zero value is foreground.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from vidseg.evaluation.errors import EvaluationError

#: Boundary tolerance of the DAVIS protocol, as a fraction of the image diagonal.
DEFAULT_BOUND_TH = 0.008
#: Number of temporal bins that the decay compares (first bin minus last bin).
DECAY_BINS = 4


def _as_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.ndim != 2 or gt.ndim != 2:
        raise EvaluationError(
            f"masks must be 2-D (height, width); got prediction {pred.shape} and ground truth "
            f"{gt.shape}: pass one object's mask, not a stack or a colour image"
        )
    if pred.shape != gt.shape:
        raise EvaluationError(
            f"prediction size {pred.shape[1]}x{pred.shape[0]} differs from ground truth size "
            f"{gt.shape[1]}x{gt.shape[0]}: predict at the ground truth's resolution"
        )
    return pred.astype(bool, copy=False), gt.astype(bool, copy=False)


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """J: the intersection over union of two masks; 1.0 when both are empty."""
    pred, gt = _as_pair(pred, gt)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & gt) / union)


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """The one-pixel-wide boundary map of a mask, as the DAVIS toolkit's ``seg2bmap`` draws it.

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour
    (the last row and column compare with their only in-image neighbour; the bottom-right
    corner is never a boundary pixel).
    """
    seg = np.asarray(mask).astype(bool, copy=False)
    right = np.zeros_like(seg)
    down = np.zeros_like(seg)
    diag = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    down[:-1, :] = seg[1:, :]
    diag[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ right) | (seg ^ down) | (seg ^ diag)
    bmap[-1, :] = seg[-1, :] ^ right[-1, :]
    bmap[:, -1] = seg[:, -1] ^ down[:, -1]
    bmap[-1, -1] = False
    return bmap


def boundary_tolerance(shape: tuple[int, ...], bound_th: float = DEFAULT_BOUND_TH) -> int:
    """The boundary tolerance in pixels: ``ceil(bound_th * diagonal)``, or ``bound_th`` itself
    when it is 1 or more (an absolute number of pixels), as in the toolkit."""
    if bound_th >= 1:
        return int(math.ceil(bound_th))
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def disk(radius: int) -> np.ndarray:
    """The disk structuring element of ``skimage.morphology.disk``: x² + y² <= radius²."""
    axis = np.arange(-radius, radius + 1)
    return (axis[:, None] ** 2 + axis[None, :] ** 2 <= radius**2).astype(np.uint8)


def boundary_f_measure(
    pred: np.ndarray, gt: np.ndarray, bound_th: float = DEFAULT_BOUND_TH
) -> float:
    """F: the F-measure of boundary precision and recall, with a tolerance of
    ``ceil(bound_th * image diagonal)`` pixels (a disk); 1.0 when both masks are empty.

    Precision is the fraction of predicted boundary pixels within the tolerance of the ground
    truth boundary, recall the fraction of ground truth boundary pixels within the tolerance of
    the predicted boundary.
    """
    pred, gt = _as_pair(pred, gt)
    pred_b = seg2bmap(pred)
    gt_b = seg2bmap(gt)
    n_pred = np.count_nonzero(pred_b)
    n_gt = np.count_nonzero(gt_b)
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0  # precision or recall is 0 (the toolkit sets the other to 1)
    kernel = disk(boundary_tolerance(pred.shape, bound_th))
    pred_dil = cv2.dilate(pred_b.view(np.uint8), kernel).view(bool)
    gt_dil = cv2.dilate(gt_b.view(np.uint8), kernel).view(bool)
    precision = np.count_nonzero(pred_b & gt_dil) / n_pred
    recall = np.count_nonzero(gt_b & pred_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Statistics:
    """The DAVIS statistics of one measure over one object's scored frames.

    ``mean``: the mean score; ``recall``: the fraction of frames scoring more than 0.5;
    ``decay``: the mean over the first of 4 temporal bins minus the mean over the last one.
    """

    mean: float
    recall: float
    decay: float


def decay_bins(num_values: int, num_bins: int = DECAY_BINS) -> list[slice]:
    """The temporal bins of the toolkit's decay, as slices of the per-frame values.

    The toolkit puts ``num_bins + 1`` rounded, evenly spaced bounds over ``1..num_values`` and
    takes each bin from one bound to the next *inclusive*, so that neighbouring bins share their
    bound frame. (The toolkit stores the bounds as uint8, which wraps past 256 frames; we don't.)
    """
    bounds = np.round(np.linspace(1, num_values, num_bins + 1) + 1e-10).astype(np.int64) - 1
    return [slice(int(bounds[i]), int(bounds[i + 1]) + 1) for i in range(num_bins)]


def davis_statistics(values: np.ndarray | list[float]) -> Statistics:
    """Mean, recall (> 0.5) and decay of one object's per-frame scores (NaNs are ignored by the
    mean, and count as failures in the recall, as in the toolkit)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return Statistics(math.nan, math.nan, math.nan)
    bins = decay_bins(values.size)
    with np.errstate(invalid="ignore"):
        mean = float(np.nanmean(values)) if not np.all(np.isnan(values)) else math.nan
        recall = float(np.mean(values > 0.5))
        first, last = values[bins[0]], values[bins[-1]]
        if np.all(np.isnan(first)) or np.all(np.isnan(last)):
            decay = math.nan
        else:
            decay = float(np.nanmean(first) - np.nanmean(last))
    return Statistics(mean, recall, decay)
