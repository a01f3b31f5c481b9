"""``open_frames``, which picks the right :class:`FrameSource` for an input.

The interface itself (:class:`FrameSource`, :class:`VideoInfo`) lives in :mod:`vidseg.io.base`
and is re-exported here; the concrete sources live beside this module.

>>> import numpy as np
>>> with open_frames([np.zeros((4, 6, 3), np.uint8)] * 2, fps=30) as source:
...     source.info.num_frames, source.info.fps
(2, 30.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vidseg.errors import VideoReadError
from vidseg.io.array_source import ArrayFrameSource
from vidseg.io.base import FrameSource
from vidseg.io.frame_folder import FrameFolderSource
from vidseg.io.video_file import VideoFileSource

__all__ = ["open_frames"]


def open_frames(
    video: str | Path | np.ndarray | Sequence[np.ndarray] | FrameSource,
    *,
    fps: float | None = None,
) -> FrameSource:
    """Open a video file, a folder of frames or an array of frames as a :class:`FrameSource`.

    Args:
        video: a video file (any container FFmpeg reads: mp4, mov, mkv, webm, avi, ...);
            a folder of .jpg/.jpeg/.png frames (natural name order: ``2.jpg`` before
            ``10.jpg``); a uint8 array of shape (T, H, W, 3) or (T, H, W), or a list of
            (H, W, 3) frames; or an already open source, which is returned as it is.
        fps: the frame rate to report; default: the video's own, or 24 for folders and
            arrays, which carry none. Ignored for an already open source.

    Returns:
        A source to use as a context manager (or ``close()`` when done). Frames are RGB uint8
        (H, W, 3) and are decoded only when indexed.

    Raises:
        vidseg.errors.VideoReadError: the input is missing, not a video, empty or damaged.

    >>> import numpy as np
    >>> source = open_frames(np.zeros((5, 48, 64), dtype=np.uint8))
    >>> source.info.width, source.info.height, len(source), source[-1].shape
    (64, 48, 5, (48, 64, 3))
    """
    if isinstance(video, np.ndarray) or (
        isinstance(video, Sequence) and not isinstance(video, str | bytes)
    ):
        return ArrayFrameSource(video, fps=fps)
    if isinstance(video, str | Path):
        path = Path(video).expanduser()
        if path.is_dir():
            return FrameFolderSource(path, fps=fps)
        return VideoFileSource(path, fps=fps)
    if isinstance(video, FrameSource):
        return video
    raise VideoReadError(
        f"cannot read a video from a {type(video).__name__}: pass a path to a video file or "
        "frame folder, or a uint8 numpy array of frames"
    )
