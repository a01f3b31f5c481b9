"""Frames already in memory: a (T, H, W, 3) or (T, H, W) uint8 array, or a list of frames.

>>> import numpy as np
>>> grey = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
>>> source = ArrayFrameSource(grey)
>>> source[1].shape, bool((source[1][..., 0] == grey[1]).all())
((4, 5, 3), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vidseg.errors import VideoReadError
from vidseg.io.base import DEFAULT_FPS, FrameSourceBase, VideoInfo


class ArrayFrameSource(FrameSourceBase):
    """A :class:`~vidseg.io.FrameSource` over frames held in memory.

    ``frames`` is a uint8 array of shape (T, H, W, 3) (RGB) or (T, H, W) (grey), or a sequence
    of (H, W, 3) / (H, W) uint8 arrays that all have the same size. The arrays are not copied on
    construction; each frame read is a copy, so callers cannot change the input by accident.
    A fourth (alpha) channel is dropped.
    """

    def __init__(
        self,
        frames: np.ndarray | Sequence[np.ndarray],
        *,
        fps: float | None = None,
        name: str | None = None,
    ) -> None:
        self._frames: np.ndarray | Sequence[np.ndarray] = frames
        if isinstance(frames, np.ndarray):
            if frames.ndim not in (3, 4):
                raise VideoReadError(
                    f"cannot use an array of shape {frames.shape} as a video: expected "
                    "(frames, height, width, 3) for RGB or (frames, height, width) for grey"
                )
            _check_dtype(frames.dtype)
            _check_channels(frames.shape[3:], "the array")
            num_frames, height, width = frames.shape[:3]
        else:
            num_frames = len(frames)
            if num_frames:
                first_shape = np.shape(frames[0])
                for position, frame in enumerate(frames):
                    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3):
                        raise VideoReadError(
                            f"frame {position} of the list is not a (height, width, 3) or "
                            "(height, width) numpy array"
                        )
                    _check_dtype(frame.dtype)
                    _check_channels(frame.shape[2:], f"frame {position} of the list")
                    if frame.shape[:2] != first_shape[:2]:
                        raise VideoReadError(
                            f"frame {position} of the list is {frame.shape[1]}x{frame.shape[0]} "
                            f"but frame 0 is {first_shape[1]}x{first_shape[0]}: all frames "
                            "of a video must have the same size"
                        )
                height, width = first_shape[:2]
        if num_frames == 0:
            raise VideoReadError("cannot use an empty array as a video: it has no frames")
        if height == 0 or width == 0:
            raise VideoReadError(f"cannot use frames of size {width}x{height} as a video")
        self.info = VideoInfo(
            width=int(width),
            height=int(height),
            num_frames=int(num_frames),
            fps=float(fps) if fps is not None else DEFAULT_FPS,
            name=name,
        )

    def _read(self, index: int) -> np.ndarray:
        frame = np.asarray(self._frames[index])
        if frame.ndim == 2:
            return np.repeat(frame[:, :, np.newaxis], 3, axis=2)
        return np.array(frame[:, :, :3], copy=True, order="C")

    def _release(self) -> None:
        self._frames = ()  # let the caller's memory go once the source is closed


def _check_dtype(dtype: np.dtype) -> None:
    if dtype != np.uint8:
        raise VideoReadError(
            f"frames must be uint8 RGB, not {dtype}: convert them first, e.g. "
            "(frames * 255).round().astype(np.uint8) for floats in [0, 1]"
        )


def _check_channels(channel_shape: tuple[int, ...], what: str) -> None:
    if channel_shape and channel_shape[0] not in (3, 4):
        raise VideoReadError(
            f"{what} has {channel_shape[0]} colour channels: expected 3 (RGB), 4 (RGBA) "
            "or none (grey)"
        )
