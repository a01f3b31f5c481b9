"""Back to full resolution: upsample coarse mask probabilities and snap them to image edges.

The readout gives probabilities on a stride-8 grid of a downscaled frame. Bilinear upsampling
alone gives blobby boundaries; a guided filter (He et al., 2010) with the full-resolution frame as
guide makes the probability follow the image's edges, at a cost linear in the pixel count.
"""

from __future__ import annotations

import cv2
import numpy as np


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Edge-preserving smoothing of ``source`` (float32 HxW) guided by ``guide`` (float32 HxW,
    values in [0, 1])."""
    size = (2 * radius + 1, 2 * radius + 1)

    def box(image: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(image, cv2.CV_32F, size, borderType=cv2.BORDER_REFLECT)

    mean_guide = box(guide)
    mean_source = box(source)
    covariance = box(guide * source) - mean_guide * mean_source
    variance = box(guide * guide) - mean_guide * mean_guide
    slope = covariance / (variance + eps)
    offset = mean_source - slope * mean_guide
    return box(slope) * guide + box(offset)


def upsample_probability(
    probability: np.ndarray,
    guide: np.ndarray | None,
    size: tuple[int, int],
    radius: int,
    eps: float,
) -> np.ndarray:
    """Upsample a coarse probability map to ``size`` = (height, width), guided by the frame's
    grey image (float32 in [0, 1]) when ``radius`` > 0."""
    height, width = size
    full = cv2.resize(
        probability.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
    )
    if radius > 0 and guide is not None:
        full = guided_filter(guide, full, radius, eps)
    return np.clip(full, 0.0, 1.0)
