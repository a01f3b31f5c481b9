"""The frame-source interface, the facts known about a video, and the base class of the sources.

>>> import numpy as np
>>> from vidseg.io.array_source import ArrayFrameSource
>>> with ArrayFrameSource(np.zeros((3, 4, 6, 3), dtype=np.uint8)) as source:
...     isinstance(source, FrameSource), len(source), source[-1].shape
(True, 3, (4, 6, 3))
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from vidseg.errors import FrameIndexError

_Source = TypeVar("_Source")

DEFAULT_FPS = 24.0
"""Frame rate reported for inputs that carry none (frame folders, arrays)."""


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a video before decoding it.

    ``width`` and ``height`` are those of the decoded frames, after applying ``rotation``.

    >>> info = VideoInfo(width=640, height=480, num_frames=82, fps=24.0)
    >>> info.rotation, info.frame_names, info.name
    (0, None, None)
    """

    width: int
    height: int
    num_frames: int
    fps: float
    rotation: int = 0  # degrees clockwise that the container asks players to rotate by
    frame_names: tuple[str, ...] | None = None  # stems of the input frames, for frame folders
    name: str | None = None  # the input's name (file or folder stem), for naming outputs


@runtime_checkable
class FrameSource(Protocol):
    """A random-access sequence of RGB uint8 frames of shape (height, width, 3).

    Sources are context managers: leaving the ``with`` block closes them.

    Indexing accepts ``0 <= i < len(source)`` and, like a list, negative indices from the end;
    any other index raises :class:`vidseg.errors.FrameIndexError`. Every frame returned is a
    fresh array that the caller may modify.
    """

    info: VideoInfo

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def close(self) -> None: ...

    def __enter__(self: _Source) -> _Source: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class FrameSourceBase(ABC):
    """What every concrete source shares: index checks, iteration, closing, ``with`` support.

    Subclasses set ``self.info`` and implement :meth:`_read` (and :meth:`_release` if they hold
    files open).
    """

    info: VideoInfo
    _closed: bool = False

    @abstractmethod
    def _read(self, index: int) -> np.ndarray:
        """Return frame ``index`` (already checked to lie in range) as a fresh RGB uint8 array."""

    def _release(self) -> None:  # noqa: B027 - optional hook: most sources hold nothing open
        """Free what the source holds open; called once by :meth:`close`."""

    def __len__(self) -> int:
        return self.info.num_frames

    def __getitem__(self, index: int) -> np.ndarray:
        if self._closed:
            raise ValueError(f"{self!r} is closed; open the video again to read frames")
        return self._read(self._check_index(index))

    def __iter__(self) -> Iterator[np.ndarray]:
        for index in range(len(self)):
            yield self[index]

    def _check_index(self, index: int) -> int:
        try:
            index = operator.index(index)  # accepts numpy integers, refuses floats and slices
        except TypeError:
            raise TypeError(f"frame indices must be integers, not {type(index).__name__}") from None
        count = len(self)
        if -count <= index < 0:
            index += count
        if not 0 <= index < count:
            raise FrameIndexError(
                f"frame index {index} is out of range: this video has {count} frames, "
                f"so valid indices are 0 to {count - 1}"
            )
        return index

    def close(self) -> None:
        """Release the underlying file; closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self: _Source) -> _Source:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        info = self.info
        state = ", closed" if self._closed else ""
        return (
            f"<{type(self).__name__} {info.name or ''!s} {info.width}x{info.height}, "
            f"{info.num_frames} frames at {info.fps:g} fps{state}>"
        )
