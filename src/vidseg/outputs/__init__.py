"""Outputs: masks as DAVIS palette PNGs, COCO RLE JSON, and overlay videos.

Every writer takes frames one at a time, writes under a temporary name beside the destination
and renames it into place on ``close()``; used as a context manager, an exception inside the
``with`` block leaves nothing behind (and any existing output untouched).

>>> import tempfile, numpy as np
>>> from vidseg.outputs import PaletteMaskWriter, object_color
>>> with PaletteMaskWriter(tempfile.mkdtemp() + "/masks") as masks:
...     masks.write(0, np.zeros((4, 6), np.uint8))
>>> object_color(1)
(128, 0, 0)
"""

from vidseg.outputs.coco_rle import CocoRleWriter, decode_rle, encode_rle, read_coco_masks
from vidseg.outputs.overlay import OverlayVideoWriter, render_overlay
from vidseg.outputs.palette import DAVIS_PALETTE, object_color
from vidseg.outputs.palette_png import PaletteMaskWriter, write_palette_png

__all__ = [
    "DAVIS_PALETTE",
    "CocoRleWriter",
    "OverlayVideoWriter",
    "PaletteMaskWriter",
    "decode_rle",
    "encode_rle",
    "object_color",
    "read_coco_masks",
    "render_overlay",
    "write_palette_png",
]
