"""The prompts a user gives for an object on a frame: clicks, a box, or a mask."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ObjectPrompt:
    """Everything the user said about one object on one frame.

    Points are (x, y) pixel coordinates with labels 1 (positive, "this is the object") or
    0 (negative, "this is not"). The box is (x1, y1, x2, y2) in pixels. A mask, when given,
    is the object's full-resolution boolean mask and overrides points and box.
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    box: np.ndarray | None = None
    mask: np.ndarray | None = None

    @property
    def is_empty(self) -> bool:
        return self.mask is None and self.box is None and len(self.points) == 0
