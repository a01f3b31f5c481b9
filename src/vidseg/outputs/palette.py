"""The DAVIS colour palette, so that an object has the same colour in every output.

DAVIS (like PASCAL VOC) stores masks as indexed PNGs whose palette spreads the bits of the
index over the red, green and blue channels: 0 is black, 1 dark red, 2 dark green, 3 olive, ...

>>> object_color(1), object_color(2), object_color(3)
((128, 0, 0), (0, 128, 0), (128, 128, 0))
>>> DAVIS_PALETTE.shape, DAVIS_PALETTE.dtype
((256, 3), dtype('uint8'))
"""

from __future__ import annotations

import numpy as np

MAX_OBJECT_ID = 255
"""The largest object id that fits an 8-bit indexed PNG, and so has a palette colour."""


def _bit_interleaved_palette(size: int = 256) -> np.ndarray:
    """The PASCAL VOC / DAVIS palette: bit k of an index sets bit 7 - k // 3 of one channel.

    Bits 0, 3, 6 of the index go to red, bits 1, 4, 7 to green and bits 2, 5 to blue, each
    channel's bits filled from the most significant down.
    """
    indices = np.arange(size)
    palette = np.zeros((size, 3), dtype=np.uint8)
    for level in range(8):
        for channel in range(3):
            bit = (indices >> (3 * level + channel)) & 1
            palette[:, channel] |= (bit << (7 - level)).astype(np.uint8)
    return palette


DAVIS_PALETTE: np.ndarray = _bit_interleaved_palette()
"""(256, 3) uint8 array: ``DAVIS_PALETTE[k]`` is the RGB colour of object id k (0: background)."""
DAVIS_PALETTE.flags.writeable = False


def object_color(obj_id: int) -> tuple[int, int, int]:
    """The (r, g, b) colour that every vidseg output uses for object ``obj_id`` (0 to 255).

    >>> object_color(0), object_color(4), object_color(255)
    ((0, 0, 0), (0, 0, 128), (224, 224, 192))
    """
    if not 0 <= obj_id <= MAX_OBJECT_ID:
        raise ValueError(
            f"object id {obj_id} has no palette colour: ids must lie in 0..{MAX_OBJECT_ID}"
        )
    red, green, blue = DAVIS_PALETTE[obj_id]
    return int(red), int(green), int(blue)
