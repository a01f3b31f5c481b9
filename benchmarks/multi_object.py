"""Many objects at once, on real data: objects cut from several DAVIS 2016 val sequences (with
their true masks) and composited, moving, onto another val sequence, crossing and hiding each
other.

For N = 1, 2, 4, 8 objects: a clip of 50 frames at 854x480; object k comes from the k-th
sequence after the background's, scaled to half size and drifting across the frame at its own
speed and height, drawn in order (later objects in front). Every object is prompted with its
mask on frame 0 and tracked forward by one ``TrackingSession``. Reported: J&F per object
(DAVIS protocol, mean over objects), identity switches (an object's mask moving mostly onto
another object's truth) and frames per second, for the engine, the previous release and the
training-free matching tracker.

    python benchmarks/multi_object.py                 # writes the "multi-object" section
    python benchmarks/multi_object.py --counts 1,2 --no-write
    python benchmarks/multi_object.py --fold 3 --engines vidseg+tracker.weights=hold3.pt

``--fold N`` composites the train sequences that ``train_tracker.py --hold-out N`` leaves out,
instead of val, to compare weights trained without them (it does not write the docs).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import TRACKER_ENGINES, built_engines  # noqa: E402
from common import (  # noqa: E402
    BENCHMARKS_MD,
    DEFAULT_DAVIS,
    machine_description,
    open_sequence,
    read_sequence_list,
    write_section,
)
from presence_holdout import held_out  # noqa: E402

SECTION = "multi-object"
CLIP_FRAMES = 50
# Each engine: its name in tables and a function giving its config overrides.
ENGINES = {
    **TRACKER_ENGINES,
    "vidseg-matching": ("vidseg_matching", lambda: {"tracker": {"kind": "matching"}}),
}


def composite_clip(
    data: Path, sequences: list[str], count: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames and label maps (0 = background, k = object k) of a clip with ``count`` objects."""
    from vidseg.evaluation import read_mask

    background = list(open_sequence(data, sequences[0], max_frames=CLIP_FRAMES))
    height, width = background[0].shape[:2]
    frames = [f.copy() for f in background]
    labels = [np.zeros((height, width), np.uint8) for _ in frames]
    rng = np.random.default_rng(count)
    for k in range(1, count + 1):
        name = (
            sequences[k % len(sequences)] if k < len(sequences) else sequences[k % len(sequences)]
        )
        source = open_sequence(data, name, max_frames=CLIP_FRAMES)
        annotations = data / "Annotations" / "480p" / name
        speed = rng.uniform(-6, 6)  # pixels per frame, so objects cross each other
        shift_y = rng.uniform(-0.3, 0.3) * height
        start_x = rng.uniform(-0.3, 0.3) * width
        for t in range(len(frames)):
            index = min(t, len(source) - 1)
            small = cv2.resize(source[index], (width // 2, height // 2), cv2.INTER_AREA)
            mask = read_mask(annotations / f"{index:05d}.png") > 0
            small_mask = cv2.resize(mask.astype(np.uint8), (width // 2, height // 2)) > 0
            dx = int(start_x + speed * t + width // 4)
            dy = int(shift_y + height // 4)
            matrix = np.float32([[1, 0, dx], [0, 1, dy]])
            placed = cv2.warpAffine(small, matrix, (width, height))
            placed_mask = cv2.warpAffine(small_mask.astype(np.uint8), matrix, (width, height)) > 0
            frames[t][placed_mask] = placed[placed_mask]
            labels[t][placed_mask] = k
    return frames, labels


def identity_switches(predictions: list[np.ndarray], labels: list[np.ndarray], count: int) -> int:
    """Times an object's mask goes from lying mostly on its own truth to mostly on another's."""
    switches = 0
    for k in range(1, count + 1):
        owner = k
        for prediction, label in zip(predictions, labels, strict=True):
            covered = np.bincount(label[prediction == k], minlength=count + 1)[1:]
            if covered.sum() == 0:
                continue
            now = int(covered.argmax()) + 1
            if now != owner:
                switches += owner == k  # count leaving its own object, not every frame after
                owner = now
    return switches


class RecordingEngine:
    """Passes everything to ``engine`` and keeps the trackers it makes, for their timings."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.name = engine.name
        self.trackers: list = []

    def mask_from_prompt(self, frame, prompt, previous=None):
        return self.engine.mask_from_prompt(frame, prompt, previous)

    def new_tracker(self, info, *, reverse=False):
        tracker = self.engine.new_tracker(info, reverse=reverse)
        self.trackers.append(tracker)
        return tracker

    def stage_seconds(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for tracker in self.trackers:
            for stage, seconds in tracker.stage_seconds.items():
                total[stage] = total.get(stage, 0.0) + seconds
        return total


#: Frames each engine tracks, untimed, before any is timed.
WARM_UP_FRAMES = 8


def run(engine, frames: list[np.ndarray], labels: list[np.ndarray], count: int):
    from vidseg.session import TrackingSession

    session = TrackingSession(np.stack(frames), engine=engine)
    for k in range(1, count + 1):
        session.add_mask(0, k, labels[0] == k)
    predictions = [np.zeros(labels[0].shape, np.uint8) for _ in frames]
    start = time.perf_counter()
    for result in session.propagate():
        predictions[result.frame_index] = result.label_map()
    return predictions, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1,2,4,8")
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="comma-separated, among " + ", ".join(ENGINES) + ", each optionally with "
        "+SECTION.SETTING=VALUE config overrides",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DAVIS, help="DAVIS 2016 root")
    parser.add_argument("--no-write", action="store_true", help="print, don't write the docs")
    parser.add_argument(
        "--fold",
        type=int,
        help="composite the train sequences held out by train_tracker.py --hold-out FOLD "
        "instead of val (implies --no-write)",
    )
    args = parser.parse_args(argv)
    from vidseg.evaluation import evaluate_sequence

    if args.fold is None:
        sequences = read_sequence_list(args.data, "val")
    else:
        sequences, args.no_write = held_out(args.data, args.fold), True
    counts = [int(c) for c in args.counts.split(",")]
    rows, stage_rows, object_rows = [], [], []
    stage_names: list[str] = []
    try:
        engines = list(built_engines(args.engines, ENGINES).values())
    except ValueError as error:
        parser.error(str(error))
    # A few untimed frames per engine first: whichever engine ran first used to pay the
    # process's warm-up (its encoder and read-out 15-30% slower than the same code after it).
    # Each clip is composited once and shared by every engine (about 60 MB a clip).
    clips = {count: composite_clip(args.data, sequences, count) for count in counts}
    frames, labels = clips[min(counts)]
    for _, builtin in engines:
        run(builtin, frames[:WARM_UP_FRAMES], labels[:WARM_UP_FRAMES], min(counts))
    for name, builtin in engines:
        weighted = 0.0  # J&F summed over every object of every clip
        for count in counts:
            frames, labels = clips[count]
            engine = RecordingEngine(builtin)
            predictions, seconds = run(engine, frames, labels, count)
            stages = engine.stage_seconds()
            stages["session (masks, RLE)"] = seconds - sum(stages.values())
            stage_names = stage_names or list(stages)
            per_frame = {k: 1000 * v / (len(frames) - 1) for k, v in stages.items()}
            stage_rows.append(
                f"| {name} | {count} | "
                + " | ".join(f"{per_frame.get(k, 0.0):.1f}" for k in stage_names)
                + f" | {1000 * seconds / (len(frames) - 1):.1f} |"
            )
            scores = evaluate_sequence(predictions, labels, name=f"{count} objects")
            switches = identity_switches(predictions, labels, count)
            fps = (len(frames) - 1) / seconds
            rows.append(f"| {name} | {count} | {100 * scores.jf:.1f} | {switches} | {fps:.1f} |")
            print(rows[-1], file=sys.stderr, flush=True)
            weighted += scores.jf * count
        object_rows.append(f"| {name} | {sum(counts)} | {100 * weighted / sum(counts):.1f} |")
    command = "python benchmarks/multi_object.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    machine = "; ".join(f"{k} {v}" for k, v in machine_description().items())
    body = "\n".join(
        [
            "## Many objects (DAVIS 2016 val objects composited into one clip)",
            "",
            f"Measured {date.today()} with",
            "",
            "```",
            command.strip(),
            "```",
            "",
            f"{CLIP_FRAMES}-frame 854x480 clips; objects cut from other val sequences with their "
            "masks, at half size, drifting across the background sequence and crossing each "
            "other. All objects prompted with their frame-0 masks. J&F: mean over objects. "
            "Switches: an object's mask moving mostly onto another object. fps: propagation "
            f"only (frames are in memory). Machine: {machine}.",
            "",
            "| engine | objects | J&F | identity switches | fps |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            "J&F per object, every object of every clip counted once:",
            "",
            "| engine | objects | J&F |",
            "| --- | ---: | ---: |",
            *object_rows,
            "",
            "Per-frame time by stage, milliseconds (the encoder runs once per frame whatever the "
            "number of objects; stages of the matching engine that the learned one lacks are "
            "shown under the nearest name, 0.0 where absent):",
            "",
            "| engine | objects | " + " | ".join(stage_names) + " | total |",
            "| --- | ---: | " + " | ".join("---:" for _ in stage_names) + " | ---: |",
            *stage_rows,
            "",
        ]
    )
    print(body)
    if not args.no_write:
        write_section(BENCHMARKS_MD, SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
