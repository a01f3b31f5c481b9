"""Video files (mp4, mov, mkv, webm, avi, anything FFmpeg reads), decoded lazily with PyAV.

How frames are found, in short:

* On opening, the file is *demuxed* once (packets read, nothing decoded) to learn every frame's
  presentation timestamp and which frames are keyframes. This gives an exact frame count even
  where the container's header is wrong or missing, and maps decoded frames back to indices by
  timestamp, so that ``source[i]`` is frame ``i`` whatever the container or B-frame order.
* Reading frame ``i`` either keeps the running decoder going (when ``i`` lies a little ahead
  of the last frame decoded: sequential reading costs one decode per frame) or seeks to the
  keyframe at or before ``i`` and decodes forward from there.
* The last few dozen frames decoded up to ``i`` are kept in a small LRU cache, so reading
  backwards (as backward tracking does) costs about one keyframe interval of decoding per
  cache-full of frames, not a seek per frame.
* The rotation that phones record (display matrix) is applied, so frames come out upright.

>>> import tempfile, av, numpy as np
>>> path = tempfile.mkdtemp() + "/clip.mp4"
>>> with av.open(path, "w") as out:
...     stream = out.add_stream("libx264", rate=24)
...     stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
...     for i in range(5):
...         frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 50 * i, np.uint8), "rgb24")
...         out.mux(stream.encode(frame))
...     out.mux(stream.encode())
>>> with VideoFileSource(path) as video:
...     video.info.num_frames, video.info.fps, video[3].shape, int(video[3].mean()) // 10
(5, 24.0, (48, 64, 3), 15)
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from vidseg.errors import VideoReadError
from vidseg.io.base import DEFAULT_FPS, FrameSourceBase, VideoInfo

_log = logging.getLogger(__name__)

CACHE_BUDGET_BYTES = 256 * 2**20
"""Memory that the cache of decoded frames may use, capped at ``MAX_CACHED_FRAMES`` frames."""
MAX_CACHED_FRAMES = 32
MIN_CACHED_FRAMES = 4

TIMESTAMP_CHECK_FRAMES = 8
"""Frames decoded on opening to check that timestamps follow display order."""

SEEK_COST_IN_FRAMES = 8
"""A seek (flush the decoder, re-read, decode the keyframe) costs about as much as decoding this
many frames, so the reader keeps decoding forward rather than seek for shorter jumps."""

# FFmpeg's "tty" demuxer shows any text file as an ANSI-art video: never what a user means.
_TEXT_DEMUXERS = frozenset({"tty"})

_FIX_HINT = (
    "re-encode it, e.g. `ffmpeg -i input -c:v libx264 -pix_fmt yuv420p output.mp4`, "
    "or extract its frames to a folder"
)


class _TimestampsOutOfOrder(Exception):
    """Decoded frames came out of timestamp order: the timestamps cannot number them."""


@dataclasses.dataclass(frozen=True)
class PacketIndex:
    """Where each frame of a video stream lies, learnt by demuxing without decoding.

    ``frame_pts`` holds the presentation timestamp of every frame in display order, or is
    ``None`` when the stream's timestamps cannot tell frames apart (missing or repeated, as in
    some raw or broken streams); the reader then counts decoded frames from the start instead.
    ``keyframes`` holds, ascending, the indices of the frames where decoding can start.
    """

    num_frames: int
    frame_pts: list[int] | None
    keyframes: list[int]
    header_frame_count: int  # what the container claims (0: it does not say)
    read_error: str | None = None  # why demuxing stopped early, if it did

    @property
    def looks_truncated(self) -> bool:
        """Whether the file ends before the container said it would."""
        return self.read_error is not None or self.header_frame_count > self.num_frames


def index_packets(container: av.container.InputContainer, stream_index: int) -> PacketIndex:
    """Demux every packet of one video stream (reading, not decoding) and index the frames.

    Stops at the first read error, so a truncated file is indexed as far as it can be read.
    """
    stream = container.streams.video[stream_index]
    for other in container.streams:
        if other.index != stream.index:
            other.discard = "all"  # tell the demuxer to skip other streams' packets early
    timestamps: list[int | None] = []
    is_keyframe: list[bool] = []
    read_error = None
    try:
        for packet in container.demux(stream):
            # Skip empty packets (the end-of-stream flush, AVI "repeat previous frame" markers)
            # and packets an edit list cuts out: the decoder delivers no frame for either.
            if packet.size == 0 or packet.is_discard:
                continue
            timestamps.append(packet.pts)
            is_keyframe.append(bool(packet.is_keyframe))
    except av.FFmpegError as exc:
        read_error = _describe(exc)
    header_count = int(stream.frames or 0)
    if header_count and header_count < len(timestamps):
        _log.info(
            "'%s': the header says %d frames but %d were read; using %d",
            container.name,
            header_count,
            len(timestamps),
            len(timestamps),
        )

    usable = all(ts is not None for ts in timestamps) and len(set(timestamps)) == len(timestamps)
    if not usable:
        keyframes = [0] if timestamps else []
        return PacketIndex(len(timestamps), None, keyframes, header_count, read_error)
    # Packets come in decoding order; frames are numbered in display (timestamp) order.
    order = sorted(range(len(timestamps)), key=lambda k: timestamps[k])  # type: ignore[arg-type,return-value]
    frame_pts = [int(timestamps[k]) for k in order]  # type: ignore[arg-type]
    keyframes = [index for index, k in enumerate(order) if is_keyframe[k]]
    if not keyframes or keyframes[0] != 0:
        keyframes.insert(0, 0)  # decoding from the very start is always possible
    return PacketIndex(len(frame_pts), frame_pts, keyframes, header_count, read_error)


def _rotation_clockwise(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> int:
    """Degrees (0, 90, 180 or 270) to turn the stored frame clockwise to show it upright."""
    # FFmpeg reports the display matrix's angle counterclockwise; a phone's "rotate=90" tag
    # (clockwise) appears as -90. Older FFmpeg builds only set the tag.
    angle = getattr(frame, "rotation", 0) or 0
    if angle:
        clockwise = -float(angle)
    else:
        try:
            clockwise = float(stream.metadata.get("rotate", 0))
        except ValueError:
            clockwise = 0.0
    return int(round(clockwise / 90.0)) * 90 % 360


class VideoFileSource(FrameSourceBase):
    """A :class:`~vidseg.io.FrameSource` over a video file, decoded lazily with random access.

    Args:
        path: any file FFmpeg can read.
        fps: frame rate to report instead of the stream's average rate.
        cache_frames: how many decoded frames to keep; default: as many as fit in 256 MiB,
            between 4 and 32.

    Frames come out RGB uint8, upright (``info.rotation`` says how much they were turned).
    Reading is safe from several threads (one at a time), but fastest from one.
    Raises :class:`vidseg.errors.VideoReadError` when the file cannot be opened or a frame
    cannot be decoded (for instance past the point where a file was cut off).
    """

    def __init__(
        self, path: str | Path, *, fps: float | None = None, cache_frames: int | None = None
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise VideoReadError(f"cannot read video '{self.path}': file does not exist")
        if not self.path.is_file():
            raise VideoReadError(f"cannot read video '{self.path}': it is not a file")
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._undecodable: set[int] = set()
        # One reformatter for all frames keeps FFmpeg's colour-conversion context alive;
        # frame.to_ndarray() would rebuild it for every frame, which costs more than decoding.
        self._reformatter = VideoReformatter()
        self._container = self._open_container()
        try:
            self._setup(fps, cache_frames)
        except BaseException:
            self._container.close()
            raise

    # -- opening -------------------------------------------------------------------------------

    def _open_container(self) -> av.container.InputContainer:
        try:
            container = av.open(str(self.path), mode="r")
        except av.FFmpegError as exc:
            raise VideoReadError(
                f"'{self.path}' is not a video FFmpeg can decode ({_describe(exc)}); if it is "
                "a video it may be truncated or damaged (an mp4 cut off before its index is "
                f"unreadable): {_FIX_HINT}"
            ) from exc
        except OSError as exc:
            raise VideoReadError(f"cannot read video '{self.path}': {exc.strerror}") from exc
        if container.format.name in _TEXT_DEMUXERS:
            container.close()
            raise VideoReadError(
                f"'{self.path}' is not a video FFmpeg can decode (it is a text file); pass a "
                "video file (mp4, mov, mkv, webm, avi) or a folder of frames"
            )
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["nothing FFmpeg recognises"]
            container.close()
            raise VideoReadError(
                f"'{self.path}' is not a video FFmpeg can decode (it holds no video stream, "
                f"only {', '.join(kinds)}); pass a video file (mp4, mov, mkv, webm, avi) "
                "or a folder of frames"
            )
        stream = container.streams.video[0]
        # Let FFmpeg use several cores for decoding: frame and slice threads as the codec allows.
        stream.thread_type = "AUTO"
        return container

    def _setup(self, fps: float | None, cache_frames: int | None) -> None:
        self._stream = self._container.streams.video[0]
        with av.open(str(self.path), mode="r") as index_container:
            self._index = index_packets(index_container, self._stream.index)
        if self._index.num_frames == 0:
            raise VideoReadError(f"video '{self.path}' holds no frames: {_FIX_HINT}")
        self._num_frames = self._index.num_frames
        self._rotation = 0
        self._cache_capacity = MAX_CACHED_FRAMES
        self._frames: Iterator[tuple[int, av.VideoFrame]] | None = None
        self._last_index = -1
        if self._index.looks_truncated:
            self._num_frames = self._count_decodable_frames()
            self._rewind()
        self._frames = self._decoded_frames()
        # Decode the first frame now: it proves the stream decodes and tells the rotation (the
        # display matrix comes attached to decoded frames) and the true frame size.
        first = next(self._frames, None)
        if first is None:
            raise VideoReadError(
                f"'{self.path}' is not a video FFmpeg can decode (no frame could be decoded "
                f"from its {self._stream.codec_context.name} stream): {_FIX_HINT}"
            )
        first_index, first_frame = first
        self._last_index = first_index
        self._rotation = _rotation_clockwise(first_frame, self._stream)
        width, height = first_frame.width, first_frame.height
        if self._rotation in (90, 270):
            width, height = height, width
        frame_bytes = width * height * 3
        self._cache_capacity = cache_frames or min(
            MAX_CACHED_FRAMES, max(MIN_CACHED_FRAMES, CACHE_BUDGET_BYTES // frame_bytes)
        )
        self._remember(first_index, self._to_rgb(first_frame))
        try:
            # Decoding the first few frames shows whether the timestamps follow display order.
            self._decode_forward_to(min(TIMESTAMP_CHECK_FRAMES, self._num_frames - 1))
        except _TimestampsOutOfOrder:
            self._stop_trusting_timestamps()
            self._decode(0)  # frame 0 again, numbered by counting this time

        rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
        self.info = VideoInfo(
            width=width,
            height=height,
            num_frames=self._num_frames,
            fps=float(fps) if fps is not None else (float(rate) if rate else DEFAULT_FPS),
            rotation=self._rotation,
            name=self.path.stem,
        )

    def _count_decodable_frames(self) -> int:
        """For a file that ends early, count the frames up to the last one that decodes.

        The frames just before the cut often cannot be decoded (they refer to frames that were
        cut off), so reporting only what was read would promise frames that then fail.
        Decoding from the last keyframe(s) to the end finds where decodable frames stop.
        """
        for keyframe in reversed(self._index.keyframes):
            self._seek(keyframe)
            assert self._frames is not None
            delivered = {frame_index for frame_index, _ in self._frames}
            self._frames = None
            if keyframe in delivered:
                end = keyframe
                while end + 1 in delivered:
                    end += 1
                break
        else:
            end = -1
        count = end + 1
        _log.warning(
            "'%s' looks truncated (%s): %d of the %d frames its header lists can be decoded; "
            "using %d",
            self.path,
            self._index.read_error or "it ends early",
            count,
            max(self._index.header_frame_count, self._index.num_frames),
            count,
        )
        return count

    # -- reading -------------------------------------------------------------------------------

    def _read(self, index: int) -> np.ndarray:
        with self._lock:
            cached = self._cache.get(index)
            if cached is None:
                cached = self._decode(index)
            else:
                self._cache.move_to_end(index)
            # A copy, so that a caller drawing on its frame cannot change the cached one.
            return cached.copy()

    def _decode(self, index: int) -> np.ndarray:
        if index in self._undecodable:
            raise self._undecodable_error(index)
        keyframes = self._index.keyframes
        position = bisect.bisect_right(keyframes, index) - 1
        starts: list[int | None] = []
        decoding_ahead = self._frames is not None and self._last_index < index
        if decoding_ahead and index - self._last_index <= (
            index - keyframes[position] + SEEK_COST_IN_FRAMES
        ):
            starts.append(None)  # None: carry on from where the decoder is
        # Should the decoder not deliver the frame from the nearest keyframe (the container's
        # seek landed after it, or the frames before it in an open GOP refer further back),
        # starting one keyframe earlier settles it.
        starts.extend(keyframes[max(position - 1, 0) : position + 1][::-1])
        try:
            for start in starts:
                if start is not None:
                    self._seek(start)
                frame = self._decode_forward_to(index)
                if frame is not None:
                    return frame
        except _TimestampsOutOfOrder:
            self._stop_trusting_timestamps()
            return self._decode(index)
        self._undecodable.add(index)
        raise self._undecodable_error(index)

    def _decode_forward_to(self, index: int) -> np.ndarray | None:
        """Decode on until frame ``index``; cache it and the frames just before it.

        Returns None if the decoder skips past ``index`` or reaches the end without it.
        """
        if self._frames is None:
            return None
        keep_from = index - self._cache_capacity + 1
        for frame_index, frame in self._frames:
            self._last_index = frame_index
            if frame_index > index:
                self._remember(frame_index, self._to_rgb(frame))  # the next read may want it
                return None
            if frame_index >= keep_from:
                rgb = self._to_rgb(frame)
                self._remember(frame_index, rgb)
                if frame_index == index:
                    return rgb
        self._frames = None  # end of stream: the next read must seek
        return None

    def _decoded_frames(self) -> Iterator[tuple[int, av.VideoFrame]]:
        """Decode from the container's current position, yielding (frame index, frame)."""
        frame_pts = self._index.frame_pts
        counted = 0  # for streams whose timestamps are unusable, which always start at frame 0
        previous_index = -1
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet: av.Packet | None = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as exc:  # truncated or damaged: drain what is decoded
                _log.debug("read error in '%s': %s", self.path, exc)
                packet = None
            try:
                frames = self._stream.decode(packet)
            except av.FFmpegError as exc:  # a damaged packet: its frame will be reported missing
                _log.debug("decode error in '%s': %s", self.path, exc)
                frames = []
            for frame in frames:
                if frame_pts is None:
                    frame_index = counted
                    counted += 1
                elif frame.pts is None:
                    continue
                else:
                    frame_index = bisect.bisect_left(frame_pts, frame.pts)
                    if frame_index == len(frame_pts) or frame_pts[frame_index] != frame.pts:
                        continue  # a frame the demuxer never saw: it cannot be numbered
                    if frame_index <= previous_index:
                        raise _TimestampsOutOfOrder
                    previous_index = frame_index
                if frame_index < self._num_frames:
                    yield frame_index, frame
            if packet is None:
                return

    def _seek(self, keyframe_index: int) -> None:
        frame_pts = self._index.frame_pts
        if frame_pts is not None and keyframe_index > 0:
            try:
                self._container.seek(frame_pts[keyframe_index], stream=self._stream, backward=True)
            except av.FFmpegError as exc:
                _log.debug("seek failed in '%s' (%s); decoding from the start", self.path, exc)
                self._rewind()
        else:
            self._rewind()
        self._frames = self._decoded_frames()
        self._last_index = -1

    def _stop_trusting_timestamps(self) -> None:
        """Number frames by counting them from the start, forgetting what was read by pts."""
        _log.info(
            "'%s': decoded frames come out of timestamp order (as with B-frames in AVI); "
            "numbering them by counting, so random access will decode from the start",
            self.path,
        )
        self._index = dataclasses.replace(self._index, frame_pts=None, keyframes=[0])
        self._cache.clear()  # frames numbered by the bad timestamps may sit in the wrong slots
        self._undecodable.clear()
        self._frames = None
        self._last_index = -1

    def _rewind(self) -> None:
        """Go back to the first frame; reopening is the one way that works for every stream."""
        try:
            self._container.seek(0, stream=self._stream, backward=True)
            if self._index.frame_pts is not None:
                return
        except av.FFmpegError:
            pass
        # Streams without usable timestamps are counted from the first frame, so they must
        # restart at exactly the beginning: reopen rather than trust a seek.
        self._container.close()
        self._container = self._open_container()
        self._stream = self._container.streams.video[0]

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        # The colour matrix comes from the frame by default, but its range must be passed:
        # full-range footage (phones, MJPEG) would otherwise come out with clipped contrast.
        rgb = self._reformatter.reformat(
            frame, format="rgb24", src_color_range=frame.color_range or None
        ).to_ndarray()
        if self._rotation:
            # np.rot90 turns counterclockwise for positive k.
            rgb = np.ascontiguousarray(np.rot90(rgb, k=-(self._rotation // 90)))
        return rgb

    def _remember(self, index: int, rgb: np.ndarray) -> None:
        self._cache[index] = rgb
        self._cache.move_to_end(index)
        while len(self._cache) > self._cache_capacity:
            self._cache.popitem(last=False)

    def _undecodable_error(self, index: int) -> VideoReadError:
        return VideoReadError(
            f"cannot decode frame {index} of '{self.path}' ({self._num_frames} frames): "
            f"the decoder did not deliver it, so the file is probably truncated or damaged "
            f"there; {_FIX_HINT}"
        )

    def _release(self) -> None:
        with self._lock:
            self._frames = None
            self._cache.clear()
            self._container.close()


def _describe(exc: av.FFmpegError) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text[0].lower() + text[1:] if text else type(exc).__name__
