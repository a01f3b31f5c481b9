"""Thin parts kept through tracking: a kite's lines, a paraglider's, a bicycle's spokes.

The tracker decodes at stride 4 of its 576-px input, about 6x6 frame pixels a cell, so a part a
few pixels wide is lost on the first propagated frame and never drawn again (on DAVIS val,
parts under 7 px wide are a third of ``paragliding-launch``'s mask and a quarter of
``kite-surf``'s). The thin-part refiner redraws them at the frame's own resolution: a
:class:`~vidseg.engines.builtin.mask_refiner.MaskRefiner` that reads the frame's pixels, the
tracker's probability and the object's mask on the frame before, and corrects the probability
in a band around that mask's thin parts. Where an object has no thin parts (most objects),
nothing runs.

:class:`ThinPartTracker` wraps any tracker with it: it remembers each object's last final mask
(the prompt's, then the refined prediction's) and refines the inner tracker's predictions.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vidseg.engines.base import ObjectPrediction, Tracker
from vidseg.engines.builtin.mask_refiner import LOGIT_LIMIT, MaskRefiner, normalized_rgb
from vidseg.engines.builtin.tracker import summed_stage_seconds

#: RGB, the tracker's probability, the object's mask on the frame before.
THIN_PART_INPUTS = 5
# Parts narrower than this share of the frame's height are thin (7 px at 480p).
_THIN_WIDTH = 7 / 480
# The band refined around the thin parts, as a share of the frame's height (24 px at 480p):
# how far a line may move in one frame.
_BAND_WIDTH = 24 / 480


def thin_parts(mask: np.ndarray) -> np.ndarray:
    """The parts of ``mask`` (bool, height x width) too narrow to survive a morphological
    opening a few pixels wide (:data:`_THIN_WIDTH` of the frame's height).

    >>> mask = np.zeros((480, 640), bool)
    >>> mask[100:200, 100:200] = True   # a body...
    >>> mask[150:152, 200:400] = True   # ...and a line two pixels wide
    >>> parts = thin_parts(mask)
    >>> int(parts[150:152, 200:400].sum()), bool(parts[120:180, 120:180].any())
    (400, False)
    """
    size = max(3, round(_THIN_WIDTH * mask.shape[0]) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    return mask & (opened == 0)


def thin_part_band(mask: np.ndarray, min_share: float) -> np.ndarray | None:
    """Where the thin-part refiner works for an object whose mask on the frame before is
    ``mask``: its thin parts grown by :data:`_BAND_WIDTH`; None when they are under
    ``min_share`` of the mask (no thin parts worth the time)."""
    parts = thin_parts(mask)
    count = int(parts.sum())
    if count == 0 or count < min_share * mask.sum():
        return None
    radius = max(1, round(_BAND_WIDTH * mask.shape[0]))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    return cv2.dilate(parts.astype(np.uint8), kernel) > 0


def thin_part_input(
    image: np.ndarray,
    probability: np.ndarray,
    previous: np.ndarray,
    prompt: np.ndarray | None = None,
) -> torch.Tensor:
    """(1, THIN_PART_INPUTS, height, width): ``image`` (RGB uint8) normalised, the tracker's
    ``probability`` and the object's ``previous`` mask (bool), all of one size; with
    ``prompt`` (the object's mask on its nearest prompted frame, for a refiner trained with
    ``--prompt-input``) one channel more."""
    planes = [probability, previous] + ([] if prompt is None else [prompt])
    maps = torch.from_numpy(np.stack(planes).astype(np.float32))[None]
    return torch.cat([normalized_rgb(image), maps], 1)


def probability_logit(probability: np.ndarray) -> torch.Tensor:
    """The logit of ``probability``, within the refiner's range (a saturated logit would
    leave it nothing to correct)."""
    logit = torch.logit(torch.from_numpy(np.asarray(probability, dtype=np.float32)), eps=1e-4)
    return logit.clamp(-LOGIT_LIMIT, LOGIT_LIMIT)


def bounding_box(region: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the True pixels of ``region`` (not empty), grown to
    multiples of 4 where the frame allows (the refiner halves the size twice)."""
    rows, cols = np.nonzero(region.any(1))[0], np.nonzero(region.any(0))[0]
    height, width = region.shape
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    bottom = min(height, top + -(-(bottom - top) // 4) * 4)
    right = min(width, left + -(-(right - left) // 4) * 4)
    return top, bottom, left, right


def refine_thin_parts(
    refiner: MaskRefiner,
    frame: np.ndarray,
    probability: np.ndarray,
    previous: np.ndarray,
    band: np.ndarray,
    prompt: np.ndarray | None = None,
) -> np.ndarray:
    """``probability`` (the tracker's, full resolution) redrawn by ``refiner`` inside
    ``band``, from the frame's pixels and the object's ``previous`` mask; unchanged outside."""
    top, bottom, left, right = bounding_box(band)
    window = (slice(top, bottom), slice(left, right))
    prompt = None if prompt is None else prompt[window]
    inputs = thin_part_input(frame[window], probability[window], previous[window], prompt)
    coarse = probability_logit(probability[window])[None, None]
    height, width = bottom - top, right - left
    pad = (0, -width % 4, 0, -height % 4)
    with torch.inference_mode():
        refined = refiner(F.pad(inputs, pad, mode="replicate"), F.pad(coarse, pad, "replicate"))
        refined = torch.sigmoid(refined[0, 0, :height, :width]).numpy()
    out = probability.copy()
    inside = band[window]
    out[window][inside] = refined[inside]
    return out


class ThinPartTracker:
    """A tracker whose predictions keep each object's thin parts (see the module's doc).
    Implements :class:`vidseg.engines.base.Tracker`; the inner tracker's memory and presence
    decisions are its own, it only sees the final masks as before."""

    def __init__(self, inner: Tracker, refiner: MaskRefiner, min_share: float) -> None:
        """``min_share``: an object is refined when its last mask's thin parts are at least
        this share of it."""
        self.inner = inner
        self.refiner = refiner
        self.min_share = min_share
        # Each object's final mask on the last frame of the pass, and on each prompted frame
        # (what the pass's first frame follows).
        self._last_masks: dict[int, np.ndarray] = {}
        self._prompted_masks: dict[int, Mapping[int, np.ndarray]] = {}
        self._seconds: dict[str, float] = defaultdict(float)
        self._reads_prompt = refiner.input_channels > THIN_PART_INPUTS

    @property
    def stage_seconds(self) -> dict[str, float]:
        """The inner tracker's seconds per stage, and this one's ("thin parts")."""
        return summed_stage_seconds([getattr(self.inner, "stage_seconds", {}), self._seconds])

    def remember(
        self,
        frame_index: int,
        frame: np.ndarray,
        masks: Mapping[int, np.ndarray],
        *,
        prompted: bool,
    ) -> None:
        if prompted:
            self._prompted_masks[frame_index] = dict(masks)
        else:  # an absent object's mask is empty: it has no thin parts left to keep
            self._last_masks.update(masks)
        self.inner.remember(frame_index, frame, masks, prompted=prompted)

    def _previous_mask(self, obj: int, frame_index: int) -> np.ndarray | None:
        """``obj``'s final mask on the frame before, or before the pass's first frame, on the
        prompted frame nearest to ``frame_index``."""
        if obj in self._last_masks:
            return self._last_masks[obj]
        return self._nearest_prompt(obj, frame_index)

    def _nearest_prompt(self, obj: int, frame_index: int) -> np.ndarray | None:
        """``obj``'s mask on the prompted frame nearest to ``frame_index`` (None: none)."""
        prompted = [index for index, masks in self._prompted_masks.items() if obj in masks]
        if not prompted:
            return None
        nearest = min(prompted, key=lambda index: abs(index - frame_index))
        return self._prompted_masks[nearest][obj]

    def predict(self, frame_index: int, frame: np.ndarray) -> dict[int, ObjectPrediction]:
        predictions = self.inner.predict(frame_index, frame)
        started = time.perf_counter()
        refined = {}
        for obj, prediction in predictions.items():
            previous = self._previous_mask(obj, frame_index)
            band, prompt = None, None
            if previous is not None and prediction.presence >= 0.5:
                band = thin_part_band(previous, self.min_share)
                if self._reads_prompt:
                    # The prompt's thin parts keep the refiner going where the last mask's
                    # have faded.
                    prompt = self._nearest_prompt(obj, frame_index)
                    band = _union(band, thin_part_band(prompt, self.min_share))
            if band is None:
                refined[obj] = prediction
                continue
            probability = refine_thin_parts(
                self.refiner, frame, prediction.probability, previous, band, prompt
            )
            refined[obj] = ObjectPrediction(probability, prediction.presence)
        self._seconds["thin parts"] += time.perf_counter() - started
        return refined


def _union(first: np.ndarray | None, second: np.ndarray | None) -> np.ndarray | None:
    if first is None or second is None:
        return first if second is None else second
    return first | second
