"""The standard simulated-click protocol of interactive segmentation (RITM, SimpleClick).

>>> import numpy as np
>>> truth = np.zeros((20, 20), bool); truth[4:16, 4:16] = True
>>> next_click(np.zeros_like(truth), truth)
((9, 9), 1)
"""

from __future__ import annotations

import cv2
import numpy as np


def next_click(prediction: np.ndarray, truth: np.ndarray) -> tuple[tuple[int, int], int]:
    """(x, y) and label (1 positive, 0 negative) of the next simulated click: the interior
    point (farthest from the region's border) of the larger error region, positive on a
    missed object part, negative on a wrongly included one."""
    best = None
    for error, label in ((truth & ~prediction, 1), (prediction & ~truth, 0)):
        # Pad so that the frame border counts as region border.
        padded = np.pad(error.astype(np.uint8), 1)
        distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
        y, x = np.unravel_index(int(distance.argmax()), distance.shape)
        if best is None or distance[y, x] > best[0]:
            best = (distance[y, x], (int(x), int(y)), label)
    assert best is not None
    return best[1], best[2]
