"""Masks as DAVIS-style indexed PNGs: one file per frame, pixel value k = object id k.

The files use the DAVIS palette, so they open in any image viewer with each object in its usual
colour, and evaluation tools read the object ids straight from the pixel values.

>>> import tempfile, numpy as np
>>> from PIL import Image
>>> out_dir = tempfile.mkdtemp() + "/masks"
>>> labels = np.zeros((4, 6), dtype=np.uint8)
>>> labels[1:3, 2:5] = 2
>>> with PaletteMaskWriter(out_dir) as writer:
...     writer.write(0, labels)
>>> image = Image.open(out_dir + "/00000.png")
>>> image.mode, int(np.asarray(image).max()), image.getpalette()[6:9]
('P', 2, [0, 128, 0])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vidseg.errors import FrameIndexError
from vidseg.outputs._atomic import PendingDirectory, PendingFile, StreamingWriter
from vidseg.outputs.palette import DAVIS_PALETTE, MAX_OBJECT_ID

_PALETTE_BYTES = DAVIS_PALETTE.tobytes()


def _as_indices(label_map: np.ndarray) -> np.ndarray:
    """Check a label map and return it as a C-contiguous uint8 array."""
    labels = np.asarray(label_map)
    if labels.ndim != 2:
        raise ValueError(f"a label map must be a (height, width) array, not {labels.shape}")
    if labels.dtype == np.uint8:
        return np.ascontiguousarray(labels)
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"a label map must hold integer object ids, not {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_OBJECT_ID):
        raise ValueError(
            f"label map values must be object ids in 0..{MAX_OBJECT_ID} to fit an indexed PNG "
            f"(got {labels.min()}..{labels.max()})"
        )
    return np.ascontiguousarray(labels, dtype=np.uint8)


def _save_png(path: Path, labels: np.ndarray) -> None:
    height, width = labels.shape
    image = Image.frombytes("P", (width, height), labels.tobytes())
    image.putpalette(_PALETTE_BYTES)
    image.save(path, format="PNG")


def write_palette_png(path: str | Path, label_map: np.ndarray) -> None:
    """Save ``label_map`` (pixel value k = object id k, 0..255) as an indexed PNG.

    The file is written under a temporary name and renamed when complete, so ``path`` never
    holds a partial PNG.

    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> path = tempfile.mkdtemp() + "/mask.png"
    >>> write_palette_png(path, np.eye(3, dtype=np.uint8) * 7)
    >>> np.asarray(Image.open(path)).tolist()
    [[7, 0, 0], [0, 7, 0], [0, 0, 7]]
    """
    labels = _as_indices(label_map)
    pending = PendingFile(path)
    try:
        _save_png(pending.temp_path, labels)
        pending.commit()
    except BaseException:
        pending.discard()
        raise


class PaletteMaskWriter(StreamingWriter):
    """Writes one indexed PNG per frame into ``out_dir``, which appears complete on ``close()``.

    Args:
        out_dir: the folder to create. If it exists it must be empty or hold only .png files
            (a previous run's masks), and is replaced as a whole on ``close()``; otherwise
            :class:`vidseg.errors.OutputError` is raised here, before anything is written.
        frame_names: for frame folders, ``VideoInfo.frame_names``: frame i is then written as
            ``frame_names[i] + ".png"`` (the DAVIS convention: mask named like its image).
            Without it, frame i is written as ``f"{i:05d}.png"``.

    Frames may be written in any order (backward tracking goes from the end) and more than
    once: the last write wins. On an exception inside the ``with`` block (or :meth:`abort`)
    nothing is left behind and an existing ``out_dir`` is untouched.
    """

    def __init__(self, out_dir: str | Path, frame_names: Sequence[str] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.frame_names = tuple(frame_names) if frame_names is not None else None
        self._pending = PendingDirectory(self.out_dir)
        self._written: set[int] = set()

    def file_name(self, frame_index: int) -> str:
        """The name of frame ``frame_index``'s mask file.

        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with PaletteMaskWriter(folder + "/a", frame_names=["img_07", "img_08"]) as writer:
        ...     writer.file_name(1)
        'img_08.png'
        >>> with PaletteMaskWriter(folder + "/b") as writer:
        ...     writer.file_name(7)
        '00007.png'
        """
        if self.frame_names is None:
            if frame_index < 0:
                raise FrameIndexError(f"frame index {frame_index} is negative")
            return f"{frame_index:05d}.png"
        if not 0 <= frame_index < len(self.frame_names):
            raise FrameIndexError(
                f"frame index {frame_index} is out of range: the video has "
                f"{len(self.frame_names)} frames, so valid indices are 0 to "
                f"{len(self.frame_names) - 1}"
            )
        return self.frame_names[frame_index] + ".png"

    @property
    def frames_written(self) -> int:
        """How many distinct frames have been written so far."""
        return len(self._written)

    def write(self, frame_index: int, label_map: np.ndarray) -> None:
        """Write frame ``frame_index``'s mask (pixel value k = object id k), replacing any."""
        self._check_open()
        labels = _as_indices(label_map)
        _save_png(self._pending.temp_path / self.file_name(frame_index), labels)
        self._written.add(frame_index)

    def _finish(self) -> None:
        self._pending.commit()

    def _abandon(self) -> None:
        self._pending.discard()
