"""Overlay videos: each object's mask blended over the frame in its palette colour, outlined.

:func:`render_overlay` draws one frame (a pure function, also used to preview results);
:class:`OverlayVideoWriter` encodes a sequence of them as an H.264 MP4 that browsers play.

>>> import numpy as np
>>> frame = np.full((4, 6, 3), 200, dtype=np.uint8)
>>> labels = np.zeros((4, 6), dtype=np.uint8)
>>> labels[1:3, 1:5] = 1
>>> shown = render_overlay(frame, labels, contour_thickness=0)
>>> shown[0, 0].tolist(), shown[1, 1].tolist()  # background untouched; object 1 tinted red
([200, 200, 200], [164, 100, 100])
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc

from vidseg.errors import OutputError
from vidseg.outputs._atomic import PendingFile, StreamingWriter
from vidseg.outputs.palette import DAVIS_PALETTE, MAX_OBJECT_ID

DEFAULT_ALPHA = 0.5
"""How much of an object's colour shows over the frame."""


def default_contour_thickness(height: int, width: int) -> int:
    """Outline width in pixels: 2 at 480p, 4 at 1080p, so outlines look alike at any size."""
    return max(1, min(height, width) // 240)


def render_overlay(
    frame: np.ndarray,
    label_map: np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    contour_thickness: int | None = None,
) -> np.ndarray:
    """Return a copy of ``frame`` with every object of ``label_map`` tinted and outlined.

    Args:
        frame: RGB uint8 (height, width, 3).
        label_map: (height, width) integer array, pixel value k = object id k (0: background),
            ids up to 255; see ``FrameResult.label_map()``.
        alpha: weight of the object colour in the blend (0: invisible, 1: opaque).
        contour_thickness: outline width in pixels (0: none); default
            :func:`default_contour_thickness`.

    Each object gets its DAVIS palette colour (:func:`vidseg.outputs.object_color`), as in the
    PNG masks. The input arrays are not modified.
    """
    frame = np.asarray(frame)
    labels = np.asarray(label_map)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be RGB uint8 (height, width, 3), not {frame.shape}")
    if labels.shape != frame.shape[:2]:
        raise ValueError(
            f"label map is {labels.shape} but the frame is {frame.shape[:2]}: they must match"
        )
    out = frame.copy()
    object_ids = [int(k) for k in np.unique(labels) if k != 0]
    if not object_ids:
        return out
    if object_ids[0] < 0 or object_ids[-1] > MAX_OBJECT_ID:
        raise ValueError(f"label map values must be object ids in 0..{MAX_OBJECT_ID}")

    colours = DAVIS_PALETTE[labels]  # per-pixel object colour (black on the background)
    blended = cv2.addWeighted(frame, 1.0 - alpha, colours, alpha, 0.0)
    np.copyto(out, blended, where=(labels != 0)[:, :, np.newaxis])

    thickness = (
        default_contour_thickness(*labels.shape) if contour_thickness is None else contour_thickness
    )
    if thickness > 0:
        for obj_id in object_ids:
            object_mask = (labels == obj_id).astype(np.uint8)
            # RETR_LIST also outlines holes, which are part of the object's shape.
            contours, _ = cv2.findContours(object_mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
            colour = tuple(int(c) for c in DAVIS_PALETTE[obj_id])
            cv2.drawContours(out, contours, -1, colour, thickness, lineType=cv2.LINE_AA)
    return out


class OverlayVideoWriter(StreamingWriter):
    """Encodes overlay frames one at a time into an H.264 MP4 (yuv420p, CRF ``crf``).

    Args:
        path: the file to write; MP4 whatever its suffix. Replaced only once complete.
        fps: frame rate, e.g. ``VideoInfo.fps``.
        width, height: size of the frames that :meth:`write` will receive. H.264 in yuv420p
            needs even sizes, so an odd width or height is padded by one pixel (copying the
            edge) rather than scaled, keeping overlay pixels where the masks put them.
        crf: x264 quality (lower: better and bigger; 20 looks clean at a small size).
        alpha: passed to :func:`render_overlay`.

    The file is tagged BT.709 with ``faststart`` (index at the front), so browsers can start
    playing it before it has fully downloaded.

    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/overlay.mp4"
    >>> with OverlayVideoWriter(path, fps=24, width=33, height=20) as writer:
    ...     for _ in range(3):
    ...         writer.write(np.zeros((20, 33, 3), np.uint8), np.ones((20, 33), np.uint8))
    >>> import av
    >>> with av.open(path) as video:
    ...     stream = video.streams.video[0]
    ...     stream.codec_context.name, stream.width, stream.height, stream.frames
    ('h264', 34, 20, 3)
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        width: int,
        height: int,
        *,
        crf: int = 20,
        alpha: float = DEFAULT_ALPHA,
    ) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, not {fps}")
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, not {width}x{height}")
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.alpha = alpha
        self.frames_written = 0
        # yuv420p stores colour for 2x2 pixel blocks, so x264 refuses odd sizes.
        self._encoded_width = self.width + self.width % 2
        self._encoded_height = self.height + self.height % 2
        self._pending = PendingFile(self.path)
        try:
            self._container = av.open(
                str(self._pending.temp_path),
                mode="w",
                format="mp4",
                options={"movflags": "+faststart"},
            )
            # limit_denominator(1001) turns 29.97002997... back into NTSC's 30000/1001.
            self._stream = self._container.add_stream(
                "libx264", rate=Fraction(fps).limit_denominator(1001)
            )
        except (av.FFmpegError, ValueError) as exc:
            self._pending.discard()
            raise OutputError(f"cannot encode H.264 video to '{self.path}': {exc}") from exc
        stream = self._stream
        stream.width, stream.height = self._encoded_width, self._encoded_height
        stream.pix_fmt = "yuv420p"
        # "veryfast": an overlay is a preview, and encoding should not slow tracking down much.
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        # Tag the colours as BT.709 (limited range) and convert with that same matrix, so every
        # player shows the palette colours as they are; untagged video is guessed at.
        stream.codec_context.colorspace = Colorspace.ITU709
        stream.codec_context.color_primaries = ColorPrimaries.BT709
        stream.codec_context.color_trc = ColorTrc.BT709
        stream.codec_context.color_range = ColorRange.MPEG

    def write(self, frame_rgb: np.ndarray, label_map: np.ndarray) -> None:
        """Append one frame, with ``label_map``'s objects drawn over it."""
        self._check_open()
        if np.shape(frame_rgb)[:2] != (self.height, self.width):
            raise ValueError(
                f"frame is {np.shape(frame_rgb)[:2]} but this writer was opened for "
                f"({self.height}, {self.width})"
            )
        overlay = render_overlay(frame_rgb, label_map, alpha=self.alpha)
        if (self._encoded_height, self._encoded_width) != (self.height, self.width):
            padding = (
                (0, self._encoded_height - self.height),
                (0, self._encoded_width - self.width),
                (0, 0),
            )
            overlay = np.pad(overlay, padding, mode="edge")
        frame = av.VideoFrame.from_ndarray(overlay, format="rgb24")
        frame = frame.reformat(
            format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
        )
        self._container.mux(self._stream.encode(frame))
        self.frames_written += 1

    def _finish(self) -> None:
        if self.frames_written == 0:
            raise OutputError(f"no frames were written to '{self.path}', so it was not created")
        self._container.mux(self._stream.encode())  # flush the frames x264 holds back
        self._container.close()
        self._pending.commit()

    def _abandon(self) -> None:
        try:
            self._container.close()
        except av.FFmpegError:
            pass  # the file is deleted anyway
        self._pending.discard()
