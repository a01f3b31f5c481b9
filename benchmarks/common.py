"""Helpers shared by the benchmark scripts: where the data is, a lazy JPEG-folder reader, the
machine description, and the replacement of a delimited section of docs/BENCHMARKS.md.

This module imports nothing from vidseg, so that it can be loaded on its own.
"""

from __future__ import annotations

import os
import platform
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DAVIS = REPO_ROOT / ".." / "shared" / "data" / "davis2016"
BENCHMARKS_MD = REPO_ROOT / "docs" / "BENCHMARKS.md"


class JpegFrames(Sequence):
    """A lazy, random-access sequence of the RGB uint8 frames of a folder of JPEGs (sorted by
    name), optionally cut to its first ``max_frames``. ``read_seconds`` adds up the time spent
    reading and decoding, so that a benchmark can tell it from the method's own time.

    (A stand-in until ``vidseg.io.open_frames`` reads frame folders.)
    """

    def __init__(self, folder: str | Path, max_frames: int | None = None) -> None:
        self.folder = Path(folder)
        paths = sorted(
            p for p in self.folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        if not paths:
            raise FileNotFoundError(f"no JPEG frames in {self.folder}")
        self.paths = paths[:max_frames] if max_frames else paths
        self.read_seconds = 0.0
        self.reads = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        start = time.perf_counter()
        bgr = cv2.imread(str(self.paths[index]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"cannot read frame {self.paths[index]}")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        self.read_seconds += time.perf_counter() - start
        self.reads += 1
        return rgb

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]


class VideoFrames(Sequence):
    """The RGB uint8 frames of a video file (the DAVIS train sequences are stored as mp4), decoded
    in order; reading an earlier frame restarts decoding. Counts reading time like
    :class:`JpegFrames`."""

    def __init__(self, path: str | Path, max_frames: int | None = None) -> None:
        import av

        self.path = Path(path)
        with av.open(str(self.path)) as container:
            count = container.streams.video[0].frames
        self.length = min(count, max_frames) if max_frames else count
        self.read_seconds = 0.0
        self.reads = 0
        self._decoder: Iterator[np.ndarray] | None = None
        self._position = -1
        self._frame: np.ndarray | None = None

    def _decode(self) -> Iterator[np.ndarray]:
        import av

        with av.open(str(self.path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not 0 <= index < self.length:
            raise IndexError(index)
        start = time.perf_counter()
        if self._decoder is None or index < self._position:
            self._decoder, self._position = self._decode(), -1
        while self._position < index:
            self._frame = next(self._decoder)
            self._position += 1
        self.read_seconds += time.perf_counter() - start
        self.reads += 1
        assert self._frame is not None
        return self._frame

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]


def open_sequence(davis_root: Path, sequence: str, max_frames: int | None = None):
    """The frames of a DAVIS 2016 sequence: JPEGs for val, the mp4 for train."""
    folder = davis_root / "JPEGImages" / "480p" / sequence
    if folder.is_dir():
        return JpegFrames(folder, max_frames)
    return VideoFrames(davis_root / "videos" / f"{sequence}.mp4", max_frames)


def read_sequence_list(davis_root: Path, split: str = "val") -> list[str]:
    """The sequence names of ``ImageSets/2016/<split>.txt``."""
    path = davis_root / "ImageSets" / "2016" / f"{split}.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_description() -> dict[str, str]:
    """What the figures were measured on."""
    info = {
        "cpu": cpu_model(),
        "cpu count": str(os.cpu_count()),
        "usable cpus": str(len(os.sched_getaffinity(0)))
        if hasattr(os, "sched_getaffinity")
        else "?",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": f"{cv2.__version__} ({cv2.getNumThreads()} threads)",
    }
    try:
        import torch

        info["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:  # pragma: no cover
        info["torch"] = "not installed"
    return info


class LoadMonitor:
    """How busy the machine was around a benchmark: the 1-minute load average just before it
    (other work) and the highest seen while it ran (sampled every few seconds).

    Absolute timings on a shared machine are only as good as the machine was quiet; the
    reports say how busy it was so that a reader can judge them.

    >>> with LoadMonitor() as monitor:
    ...     pass
    >>> monitor.peak >= 0
    True
    """

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.before = self.peak = os.getloadavg()[0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, os.getloadavg()[0])

    def __enter__(self) -> LoadMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, os.getloadavg()[0])

    def describe(self) -> str:
        """One clause for a report."""
        text = (
            f"1-minute load average {self.before:.1f} just before the run, at most "
            f"{self.peak:.1f} while it ran"
        )
        if self.before > 1.0:
            text += (
                ": other work was running, so absolute times are pessimistic and the ratios "
                "are what to read"
            )
        return text


def section_markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(text: str, name: str, body: str) -> str:
    """Replace what lies between ``<!-- name:begin -->`` and ``<!-- name:end -->`` with
    ``body``, keeping everything else; append the delimited section when there is none."""
    begin, end = section_markers(name)
    section = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: section, text, count=1)
    if begin in text or end in text:
        raise ValueError(f"only one of {begin} / {end} found: fix the file by hand")
    if not text.strip():
        return section + "\n"
    return text.rstrip("\n") + "\n\n" + section + "\n"


def write_section(path: str | Path, name: str, body: str, title: str = "# Benchmarks") -> None:
    """Write ``body`` into the named section of a Markdown file, creating the file if needed."""
    path = Path(path)
    text = path.read_text() if path.exists() else f"{title}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(text, name, body))
