"""The frame-source interface and ``open_frames``, which picks the right source for an input.

This file is a stub defining the interface; the concrete sources live beside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a video before decoding it.

    ``width`` and ``height`` are those of the decoded frames, after applying ``rotation``.
    """

    width: int
    height: int
    num_frames: int
    fps: float
    rotation: int = 0  # degrees clockwise that the container asks players to rotate by
    frame_names: tuple[str, ...] | None = None  # stems of the input frames, for frame folders


@runtime_checkable
class FrameSource(Protocol):
    """A random-access sequence of RGB uint8 frames of shape (height, width, 3)."""

    info: VideoInfo

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def close(self) -> None: ...


def open_frames(video: str | Path | np.ndarray | FrameSource) -> FrameSource:
    """Open a video file, a folder of frames or an array of frames as a :class:`FrameSource`."""
    raise NotImplementedError
