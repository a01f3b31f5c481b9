"""What propagation yields for each frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FrameResult:
    """Every tracked object's mask on one frame.

    ``masks[obj_id]`` is a boolean (height, width) array; ``scores[obj_id]`` is the object's
    presence score in [0, 1] (below 0.5 the object is judged absent and its mask is empty).
    """

    frame_index: int
    masks: dict[int, np.ndarray]
    scores: dict[int, float]

    @property
    def object_ids(self) -> list[int]:
        return sorted(self.masks)

    def present(self, obj_id: int) -> bool:
        """Whether the object is judged visible on this frame."""
        return self.scores[obj_id] >= 0.5 and bool(self.masks[obj_id].any())

    def label_map(self, dtype: type = np.uint8) -> np.ndarray:
        """One (height, width) array where pixel value k means object id k and 0 background.

        Where masks overlap, the object with the higher presence score wins.
        """
        if not self.masks:
            raise ValueError("this frame has no objects")
        shape = next(iter(self.masks.values())).shape
        labels = np.zeros(shape, dtype=dtype)
        for obj_id in sorted(self.masks, key=lambda k: self.scores[k]):
            labels[self.masks[obj_id]] = obj_id
        return labels
