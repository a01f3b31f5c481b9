"""Propagate a session's prompts and stream the results to the output writers.

Used by ``vidseg track`` and ``vidseg demo``. Memory stays flat with video length: each
frame's masks go to the writers as they come (PNG files, RLE strings) and are dropped.
Frames arrive out of order when tracking backward, which the PNG and COCO writers accept;
the overlay video needs them in order, so when tracking is not forward-only each frame's
label map is kept as a small PNG in a temporary folder and the overlay is encoded in a
second, in-order pass at the end.

Every output is all-or-nothing: on an error or Ctrl-C, the writers abort and nothing appears
under the final names.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vidseg.io import FrameSource, FrameSourceBase, VideoInfo
from vidseg.outputs import CocoRleWriter, OverlayVideoWriter, PaletteMaskWriter
from vidseg.session import Direction, TrackingSession


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for the engine's tensor work (torch intra-op threads)."""
    import torch

    torch.set_num_threads(threads)


class TimedFrames(FrameSourceBase):
    """A :class:`~vidseg.io.FrameSource` that passes reads through and adds up their time."""

    def __init__(self, source: FrameSource) -> None:
        self.source = source
        self.info: VideoInfo = source.info
        self.seconds = 0.0
        self.reads = 0

    def _read(self, index: int) -> np.ndarray:
        start = time.perf_counter()
        try:
            return self.source[index]
        finally:
            self.seconds += time.perf_counter() - start
            self.reads += 1

    def _release(self) -> None:
        self.source.close()


@dataclass
class TrackingStats:
    """What one tracking run did and how long each stage took (seconds)."""

    frames: int = 0
    objects: int = 0
    seconds: float = 0.0  # propagation and writing, from the first frame to the last output
    stages: dict[str, float] = field(default_factory=dict)
    #: The engine stage split further, as the engine's trackers report it (encoder, ...).
    engine_stages: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        """One line: frames, objects, time, speed and where the outputs went."""
        where = ", ".join(f"{name} -> {path}" for name, path in self.outputs.items())
        return (
            f"tracked {self.objects} object{'s' if self.objects != 1 else ''} over "
            f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.1f} fps); {where}"
        )

    def timings(self) -> str:
        """Per-stage timings, one ``stage: seconds`` line each."""
        names = [*self.stages, *(f"  {name}" for name in self.engine_stages)]
        width = max(len(name) for name in names) if names else 0
        total = sum(self.stages.values())
        lines = []
        for name, secs in self.stages.items():
            lines.append(f"  {name:<{width}}  {secs:7.2f} s")
            if name == "engine":
                lines += [
                    f"  {'  ' + part:<{width}}  {part_secs:7.2f} s"
                    for part, part_secs in self.engine_stages.items()
                ]
        lines.append(f"  {'total':<{width}}  {total:7.2f} s")
        return "timings:\n" + "\n".join(lines)


def run_tracking(
    session: TrackingSession,
    *,
    masks_dir: str | Path | None,
    coco_path: str | Path | None = None,
    overlay_path: str | Path | None = None,
    direction: Direction = "both",
    start_frame: int | None = None,
    max_frames: int | None = None,
    progress: bool = True,
    decode_timer: TimedFrames | None = None,
) -> TrackingStats:
    """Propagate ``session``'s prompts and write the chosen outputs.

    ``masks_dir``: a folder of palette PNGs (named after ``info.frame_names`` for frame
    folders, else ``00000.png``...); ``coco_path``: a COCO RLE JSON file; ``overlay_path``:
    an H.264 MP4 of the visited frames with the masks drawn over them, in frame order.
    ``decode_timer``, when it is the session's frame source, lets the stats tell decoding
    apart from the engine's time.
    """
    info = session.info
    passes = session.propagation_passes(start_frame, direction, max_frames)
    visit = [frame_index for frames in passes for frame_index in frames]
    stats = TrackingStats(objects=len(session.object_ids))
    clock = _StageClock(decode_timer)
    in_order = direction == "forward"

    with contextlib.ExitStack() as stack:
        # Entered in this order, closed in reverse: the overlay (most likely to fail while
        # finishing) closes first, and an error there still aborts the others.
        masks = coco = overlay = None
        if masks_dir is not None:
            masks = stack.enter_context(PaletteMaskWriter(masks_dir, info.frame_names))
            stats.outputs["masks"] = Path(masks_dir)
        if coco_path is not None:
            coco = stack.enter_context(CocoRleWriter(coco_path, info))
            stats.outputs["coco"] = Path(coco_path)
        label_dir: Path | None = None
        if overlay_path is not None:
            overlay = stack.enter_context(
                OverlayVideoWriter(overlay_path, info.fps, info.width, info.height)
            )
            stats.outputs["overlay"] = Path(overlay_path)
            if not in_order:
                label_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vidseg-")))

        bar = stack.enter_context(
            tqdm(
                total=len(visit),
                desc="tracking",
                unit="frame",
                file=sys.stderr,
                disable=not progress or not sys.stderr.isatty(),
                leave=False,
                dynamic_ncols=True,
            )
        )
        started = time.perf_counter()
        results = stack.enter_context(
            contextlib.closing(session.propagate(start_frame, direction, max_frames))
        )
        while True:
            with clock.stage("engine"):
                result = next(results, None)
            if result is None:
                break
            with clock.stage("write"):
                labels = result.label_map()
                if masks is not None:
                    masks.write(result.frame_index, labels)
                if coco is not None:
                    coco.write(result.frame_index, result.masks, result.scores)
                if overlay is not None:
                    if label_dir is None:
                        overlay.write(session.frames[result.frame_index], labels)
                    else:
                        cv2.imwrite(str(label_dir / f"{result.frame_index:06d}.png"), labels)
            stats.frames += 1
            bar.update(1)
        bar.close()
        if overlay is not None and label_dir is not None:
            with clock.stage("overlay"):
                for frame_index in sorted(visit):
                    path = label_dir / f"{frame_index:06d}.png"
                    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                    overlay.write(session.frames[frame_index], labels)
        with clock.stage("finish"):
            stack.close()  # finish every output; an error there aborts those not yet closed
    stats.seconds = time.perf_counter() - started
    stats.stages = clock.seconds
    stats.engine_stages = dict(session.engine_stage_seconds)
    return stats


class _StageClock:
    """Adds up wall time per stage, moving the time spent reading frames into ``decode``."""

    def __init__(self, decode_timer: TimedFrames | None) -> None:
        self.decode_timer = decode_timer
        self.seconds: dict[str, float] = {"decode": 0.0} if decode_timer is not None else {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        decoded = self.decode_timer.seconds if self.decode_timer is not None else 0.0
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            if self.decode_timer is not None:
                reading = self.decode_timer.seconds - decoded
                self.seconds["decode"] += reading
                elapsed -= reading
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
