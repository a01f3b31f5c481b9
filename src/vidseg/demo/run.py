"""``vidseg demo``: track a synthetic video end to end and score the result.

:func:`run_demo` renders a clip with exact ground truth (:mod:`vidseg.demo.synthetic`), writes
it as ``input.mp4`` and tracks it from that file, so the demo exercises the real decoding path.
Each object is prompted on the frame where it first appears: with its ground-truth mask, except
one object (``box_object``) prompted with the bounding box of its ground truth, to show that a
box works too. The outputs are those of ``vidseg track`` (``masks/`` palette PNGs,
``masks.json`` COCO RLE, ``overlay.mp4``) plus the ground truth as ``truth/`` palette PNGs, and
the masks are scored against it with the DAVIS measures. Needs no download and no data files.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vidseg.cli.tracking import TimedFrames, TrackingStats, run_tracking, set_threads
from vidseg.demo.synthetic import render_synthetic_video, write_mp4
from vidseg.engines.base import Engine
from vidseg.evaluation import EvaluationReport, evaluate_directories, read_mask
from vidseg.io import open_frames
from vidseg.outputs import PaletteMaskWriter, render_overlay
from vidseg.session import TrackingSession

DEFAULT_NUM_FRAMES = 36
DEFAULT_WIDTH = 640
DEFAULT_HEIGHT = 360
DEFAULT_BOX_OBJECT = 2


@dataclass
class DemoReport:
    """What :func:`run_demo` wrote and how well it tracked."""

    out_dir: Path
    num_frames: int
    width: int
    height: int
    prompts: dict[int, str]  # object id -> how it was prompted, e.g. "mask@0", "box@0"
    prompt_iou: dict[int, float]  # IoU of each prompt's mask with the ground truth there
    evaluation: EvaluationReport
    tracking: TrackingStats
    engine: str
    seconds: float  # the whole demo: rendering, encoding, loading, tracking, scoring
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def scores(self) -> dict[int, dict[str, float]]:
        """Per object: J, F and J&F (means over the scored frames)."""
        out = {}
        for _, obj in self.evaluation.all_objects():
            out[obj.object_id] = {"J": obj.j.mean, "F": obj.f.mean, "J&F": obj.jf}
        return out

    @property
    def jf(self) -> float:
        """J&F over all objects (the DAVIS figure)."""
        return self.evaluation.jf

    @property
    def fps(self) -> float:
        return self.tracking.fps

    def to_text(self) -> str:
        """The table that ``vidseg demo`` prints."""
        lines = [
            f"vidseg demo: {self.width}x{self.height}, {self.num_frames} frames, "
            f"{len(self.prompts)} objects, engine '{self.engine}' -> {self.out_dir}",
            "",
            f"{'object':>6}  {'prompt':<8} {'prompt IoU':>10}  {'J':>6}  {'F':>6}  {'J&F':>6}",
        ]
        scores = self.scores
        for obj_id, prompt in self.prompts.items():
            s = scores.get(obj_id, {"J": math.nan, "F": math.nan, "J&F": math.nan})
            lines.append(
                f"{obj_id:>6}  {prompt:<8} {self.prompt_iou[obj_id]:>10.3f}  "
                f"{s['J']:>6.3f}  {s['F']:>6.3f}  {s['J&F']:>6.3f}"
            )
        mean = self.evaluation.mean()
        lines.append(
            f"{'mean':>6}  {'':<8} {'':>10}  {mean['J-Mean']:>6.3f}  {mean['F-Mean']:>6.3f}  "
            f"{mean['J&F']:>6.3f}"
        )
        lines += [
            "",
            f"tracking: {self.tracking.frames} frames in {self.tracking.seconds:.1f} s "
            f"({self.fps:.1f} fps); whole demo {self.seconds:.1f} s",
            "files: "
            + ", ".join(f"{p.name}{'/' if p.is_dir() else ''}" for p in self.files.values()),
            "(J: region IoU, F: boundary accuracy; DAVIS protocol, first and last frames not "
            "scored)",
        ]
        return "\n".join(lines)


def run_demo(
    out_dir: str | Path = "vidseg-demo",
    num_frames: int = DEFAULT_NUM_FRAMES,
    *,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    num_objects: int = 3,
    seed: int = 0,
    box_object: int | None = DEFAULT_BOX_OBJECT,
    engine: Engine | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> DemoReport:
    """Render, write, track, write every output, and score; see the module docstring.

    ``box_object`` is the object prompted with a box (``None``: every object gets its mask).
    ``engine`` defaults to the built-in one; ``threads`` sets its CPU threads.
    """
    began = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video = render_synthetic_video(
        num_frames=num_frames, width=width, height=height, num_objects=num_objects, seed=seed
    )
    files = {
        "video": out / "input.mp4",
        "masks": out / "masks",
        "coco": out / "masks.json",
        "overlay": out / "overlay.mp4",
        "truth": out / "truth",
        "preview": out / "preview.png",
    }
    write_mp4(files["video"], video.frames, video.fps)

    with TimedFrames(open_frames(files["video"])) as frames:
        session = TrackingSession(frames, engine)
        if threads is not None:
            set_threads(threads)
        prompts: dict[int, str] = {}
        prompt_iou: dict[int, float] = {}
        for obj_id in video.object_ids:
            frame_index = video.first_frames[obj_id]
            truth = video.mask(frame_index, obj_id)
            if obj_id == box_object:
                ys, xs = np.nonzero(truth)
                box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                mask = session.add_box(frame_index, obj_id, box)
                prompts[obj_id] = f"box@{frame_index}"
            else:
                mask = session.add_mask(frame_index, obj_id, truth)
                prompts[obj_id] = f"mask@{frame_index}"
            prompt_iou[obj_id] = _iou(mask, truth)
        stats = run_tracking(
            session,
            masks_dir=files["masks"],
            coco_path=files["coco"],
            overlay_path=files["overlay"],
            direction="both",
            progress=progress,
            decode_timer=frames,
        )
        engine_name = getattr(session.engine, "name", type(session.engine).__name__)

    with PaletteMaskWriter(files["truth"]) as truth_writer:
        for frame_index, labels in enumerate(video.labels):
            truth_writer.write(frame_index, labels)
    evaluation = evaluate_directories(files["masks"], files["truth"])
    _save_preview(files["preview"], video.frames, files["masks"])
    return DemoReport(
        out_dir=out,
        num_frames=video.num_frames,
        width=video.width,
        height=video.height,
        prompts=prompts,
        prompt_iou=prompt_iou,
        evaluation=evaluation,
        tracking=stats,
        engine=engine_name,
        seconds=time.perf_counter() - began,
        files=files,
    )


def _save_preview(path: Path, frames: np.ndarray, masks_dir: Path, tiles: int = 4) -> None:
    """A strip of a few frames with the tracked masks overlaid: what the demo did, at a glance."""
    indices = np.linspace(0, len(frames) - 1, tiles).round().astype(int)
    overlays = [render_overlay(frames[i], read_mask(masks_dir / f"{i:05d}.png")) for i in indices]
    temporary = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(np.concatenate(overlays, axis=1)).save(temporary)
    os.replace(temporary, path)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
