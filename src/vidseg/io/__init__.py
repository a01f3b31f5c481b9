"""Video input: one lazy, random-access frame-source interface over video files, frame folders
and numpy arrays.

>>> import numpy as np
>>> from vidseg.io import open_frames
>>> source = open_frames(np.zeros((5, 48, 64, 3), dtype=np.uint8))
>>> source.info.width, source.info.height, source.info.num_frames
(64, 48, 5)
>>> source[4].shape
(48, 64, 3)
"""

from vidseg.io.frame_source import FrameSource, VideoInfo, open_frames

__all__ = ["FrameSource", "VideoInfo", "open_frames"]
