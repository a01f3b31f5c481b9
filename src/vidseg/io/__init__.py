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

from vidseg.io.array_source import ArrayFrameSource
from vidseg.io.base import FrameSource, FrameSourceBase, VideoInfo
from vidseg.io.frame_folder import FrameFolderSource
from vidseg.io.frame_source import open_frames
from vidseg.io.video_file import VideoFileSource

__all__ = [
    "ArrayFrameSource",
    "FrameFolderSource",
    "FrameSource",
    "FrameSourceBase",
    "VideoFileSource",
    "VideoInfo",
    "open_frames",
]
