"""A folder of frame images (.jpg, .jpeg, .png), such as DAVIS's ``JPEGImages/480p/bear``.

Frames are ordered by natural sort of their names (``2.jpg`` before ``10.jpg``) and read one at a
time when asked for, so a long sequence costs no memory up front.

>>> import tempfile, numpy as np, cv2
>>> folder = tempfile.mkdtemp()
>>> for n in (10, 2, 1):
...     _ = cv2.imwrite(f"{folder}/{n}.png", np.full((4, 6), n, dtype=np.uint8))
>>> source = FrameFolderSource(folder)
>>> source.info.frame_names, source[2].shape, int(source[2][0, 0, 0])
(('1', '2', '10'), (4, 6, 3), 10)
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from vidseg.errors import VideoReadError
from vidseg.io.base import DEFAULT_FPS, FrameSourceBase, VideoInfo

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
"""Suffixes (compared case-insensitively) of the files read as frames."""

# OpenCV >= 4.10 decodes straight to RGB; older versions need a BGR-to-RGB conversion.
_IMREAD_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)


def natural_sort_key(name: str) -> list[str | int]:
    """Sort key under which runs of digits compare as numbers, so ``2.jpg`` < ``10.jpg``.

    >>> sorted(["10.jpg", "2.jpg", "frame1.png"], key=natural_sort_key)
    ['2.jpg', '10.jpg', 'frame1.png']
    """
    # re.split with a capturing group alternates text, number, text, ...: the key therefore
    # always holds a str at even positions and an int at odd ones, so keys compare safely.
    return [
        int(part) if position % 2 else part.casefold()
        for position, part in enumerate(re.split(r"(\d+)", name))
    ]


def list_frame_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` in frame order; raise :class:`VideoReadError` if none."""
    if not folder.exists():
        raise VideoReadError(f"cannot read frame folder '{folder}': it does not exist")
    if not folder.is_dir():
        raise VideoReadError(f"cannot read frame folder '{folder}': it is not a folder")
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    if not entries:
        raise VideoReadError(
            f"frame folder '{folder}' is empty: put the video's frames in it as "
            ".jpg or .png files, or pass a video file instead"
        )
    images = [e for e in entries if e.suffix.lower() in IMAGE_SUFFIXES and e.is_file()]
    if not images:
        examples = ", ".join(repr(e.name) for e in sorted(entries)[:3])
        raise VideoReadError(
            f"frame folder '{folder}' holds no .jpg, .jpeg or .png images (it holds "
            f"{len(entries)} other entries, e.g. {examples}): point vidseg at a folder of "
            "frame images or at a video file"
        )
    images.sort(key=lambda path: natural_sort_key(path.name))
    seen: dict[str, Path] = {}
    for image in images:
        # Outputs are named after the stem, so two frames with one stem would overwrite each other.
        if image.stem in seen:
            raise VideoReadError(
                f"frame folder '{folder}' holds both '{seen[image.stem].name}' and "
                f"'{image.name}': each frame name must appear once; remove one of them"
            )
        seen[image.stem] = image
    return images


class FrameFolderSource(FrameSourceBase):
    """A :class:`~vidseg.io.FrameSource` over the images of a folder, read lazily.

    Grey, palette and RGBA images are converted to RGB (alpha dropped). Every image must have the
    size of the first one; this is checked as each frame is read, and a mismatch raises
    :class:`vidseg.errors.VideoReadError` naming the file. ``info.frame_names`` holds the file
    stems, in frame order; ``info.fps`` is ``fps`` or 24, since folders carry no frame rate.
    """

    def __init__(self, folder: str | Path, *, fps: float | None = None) -> None:
        self.folder = Path(folder)
        self.files = list_frame_files(self.folder)
        first = self._load(self.files[0])
        height, width = first.shape[:2]
        self.info = VideoInfo(
            width=width,
            height=height,
            num_frames=len(self.files),
            fps=float(fps) if fps is not None else DEFAULT_FPS,
            frame_names=tuple(path.stem for path in self.files),
            name=self.folder.resolve().name,
        )

    def _read(self, index: int) -> np.ndarray:
        path = self.files[index]
        frame = self._load(path)
        if frame.shape[:2] != (self.info.height, self.info.width):
            raise VideoReadError(
                f"frame image '{path}' is {frame.shape[1]}x{frame.shape[0]} but the first frame "
                f"'{self.files[0].name}' is {self.info.width}x{self.info.height}: all frames "
                "must have the same size; resize or remove the odd one"
            )
        return frame

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        # IMREAD_COLOR(_RGB) turns grey, palette, RGBA and 16-bit images into 8-bit colour and
        # applies the EXIF orientation, as a photo viewer would.
        if _IMREAD_RGB is not None:
            frame = cv2.imread(str(path), _IMREAD_RGB)
        else:
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is not None:
                frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if frame is None:
            raise VideoReadError(
                f"cannot read frame image '{path}': it is not a readable JPEG or PNG "
                "(corrupt, truncated or misnamed); re-export or remove it"
            )
        return frame
