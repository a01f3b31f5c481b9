"""Clicks and boxes to a mask without a learned decoder (``[prompts] decoder = "grabcut"``).

GrabCut (OpenCV) fits colour models of object and background and cuts along image edges. It
is seeded from what the user gave: a box bounds the object; positive clicks are sure object,
negative clicks sure background; a previous mask (a correction) is the probable object. For
clicks without a box, the probable object is the region around the clicks that looks like them
in the deep features, so one click on a textured object still selects all of it.
"""

from __future__ import annotations

import cv2
import numpy as np

from vidseg.session.prompts import ObjectPrompt

# GrabCut runs on a crop around the prompt scaled to at most this many pixels on its long side:
# enough for a good first mask, fast enough to feel immediate.
_WORK_SIZE = 320
_GRABCUT_ITERATIONS = 4
# Where between "typical pixel" (0) and "the clicked pixel" (1) the region around a click ends.
_SIMILARITY_THRESHOLD = 0.15


def click_radius(height: int, width: int) -> int:
    """Radius of the disc of sure labels painted around each click."""
    return max(2, round(0.008 * float(np.hypot(height, width))))


def mask_from_prompt(
    frame: np.ndarray,
    prompt: ObjectPrompt,
    similarity: np.ndarray | None = None,
    previous: np.ndarray | None = None,
) -> np.ndarray:
    """A boolean mask of the object described by ``prompt`` on ``frame`` (RGB uint8).

    ``similarity`` (float32, frame-sized, in [0, 1]) says how much each pixel resembles the
    positive clicks in deep-feature space; ``previous`` is the object's current mask.
    """
    height, width = frame.shape[:2]
    labels = np.full((height, width), cv2.GC_BGD, dtype=np.uint8)
    region = np.zeros((height, width), dtype=bool)  # where the object may be
    if prompt.box is not None:
        x1, y1, x2, y2 = np.round(prompt.box).astype(int)
        region[max(y1, 0) : y2 + 1, max(x1, 0) : x2 + 1] = True
    if previous is not None and previous.any():
        region |= cv2.dilate(previous.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    positive = prompt.points[prompt.labels == 1]
    if similarity is not None and len(positive):
        region |= _similar_region_around_clicks(similarity, positive)
    # GrabCut may grow the object into a ring around where it was thought to be.
    ring = max(8, round(0.05 * float(np.hypot(height, width))))
    grown = cv2.dilate(region.astype(np.uint8), np.ones((2 * ring + 1,) * 2, np.uint8)) > 0
    labels[grown & (prompt.box is None)] = cv2.GC_PR_BGD
    labels[region] = cv2.GC_PR_BGD
    if previous is not None:
        labels[previous & region] = cv2.GC_PR_FGD
    elif prompt.box is None:
        labels[region] = cv2.GC_PR_FGD
    radius = click_radius(height, width)
    for (x, y), label in zip(prompt.points, prompt.labels, strict=True):
        value = cv2.GC_FGD if label == 1 else cv2.GC_BGD
        cv2.circle(labels, (int(round(x)), int(round(y))), radius, int(value), -1)
    if not (labels == cv2.GC_FGD).any() and not (labels == cv2.GC_PR_FGD).any():
        labels[region] = cv2.GC_PR_FGD  # a box alone: all of it may be the object
    return _grabcut_in_crop(frame, labels)


def _similar_region_around_clicks(similarity: np.ndarray, clicks: np.ndarray) -> np.ndarray:
    """The connected region around each click that resembles it more than the frame at large
    does: above a threshold between the frame's median similarity and the click's own."""
    region = np.zeros(similarity.shape, dtype=bool)
    typical = float(np.median(similarity))
    for x, y in clicks:
        xi, yi = int(round(x)), int(round(y))
        threshold = typical + _SIMILARITY_THRESHOLD * (float(similarity[yi, xi]) - typical)
        candidate = (similarity >= threshold).astype(np.uint8)
        _, components = cv2.connectedComponents(candidate)
        if components[yi, xi] > 0:
            region |= components == components[yi, xi]
    return region


def _grabcut_in_crop(frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
    height, width = labels.shape
    possible = labels != cv2.GC_BGD
    if not possible.any():
        return np.zeros((height, width), dtype=bool)
    ys, xs = np.nonzero(possible)
    margin = max(8, int(0.15 * max(np.ptp(ys) + 1, np.ptp(xs) + 1)))
    y0, y1 = max(ys.min() - margin, 0), min(ys.max() + margin + 1, height)
    x0, x1 = max(xs.min() - margin, 0), min(xs.max() + margin + 1, width)
    crop, crop_labels = frame[y0:y1, x0:x1], labels[y0:y1, x0:x1]
    scale = min(1.0, _WORK_SIZE / max(crop.shape[:2]))
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    small_labels = cv2.resize(crop_labels, size, interpolation=cv2.INTER_NEAREST)
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    probable = np.isin(small_labels, (cv2.GC_PR_FGD, cv2.GC_FGD))
    definite_bg = small_labels == cv2.GC_BGD
    if probable.any() and (definite_bg.any() or (small_labels == cv2.GC_PR_BGD).any()):
        cv2.grabCut(
            bgr,
            small_labels,
            None,
            background,
            foreground,
            _GRABCUT_ITERATIONS,
            cv2.GC_INIT_WITH_MASK,
        )
    result = np.isin(small_labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
    full = cv2.resize(result, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) >= 0.5
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = full
    return mask
