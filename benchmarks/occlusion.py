"""Occlusion and re-identification on real data: DAVIS 2016 val sequences with the object made
fully invisible for a stretch of 10 to 30 frames, then back.

Two kinds of gap, one of each per sequence:
- ``occluder``: the object's box (grown by 15%) is covered, on each gap frame, by the same
  region of a frame of another val sequence: a real-looking occluder that hides all of it;
- ``cut``: the gap frames are replaced by frames of another val sequence (a cut away and back,
  the object is nowhere in the picture).
On gap frames the truth is "absent" (an empty mask). Reported per method: J&F over all frames
(DAVIS protocol; an empty prediction on an empty truth scores 1), absent accuracy (share of gap
frames predicted empty: no ghost mask) and re-acquisition (mean J over the 10 frames after the
gap: the object found again under its id).

    python benchmarks/occlusion.py                        # writes the "occlusion" section
    python benchmarks/occlusion.py --methods vidseg --sequences blackswan --no-write
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
from baselines import method_spec  # noqa: E402
from common import (  # noqa: E402
    BENCHMARKS_MD,
    DEFAULT_DAVIS,
    machine_description,
    open_sequence,
    read_sequence_list,
    write_section,
)

SECTION = "occlusion"
AFTER_GAP = 10


def occluded_clip(
    frames: list[np.ndarray],
    masks: list[np.ndarray],
    filler: list[np.ndarray],
    kind: str,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[np.ndarray], range]:
    """The clip with a gap of 10-30 frames (kind ``occluder`` or ``cut``) after its first
    third; returns frames, truth masks and the gap's frame range."""
    length = int(rng.integers(10, 31))
    length = min(length, max(1, len(frames) - AFTER_GAP - len(frames) // 3 - 1))
    start = len(frames) // 3
    gap = range(start, start + length)
    frames, masks = list(frames), list(masks)
    height, width = frames[0].shape[:2]
    for offset, index in enumerate(gap):
        other = cv2.resize(filler[offset % len(filler)], (width, height))
        if kind == "cut":
            frames[index] = other
        else:
            ys, xs = np.nonzero(masks[index])
            if len(xs):
                grow_x = int(0.15 * (xs.max() - xs.min() + 1)) + 2
                grow_y = int(0.15 * (ys.max() - ys.min() + 1)) + 2
                y1, y2 = max(0, ys.min() - grow_y), min(height, ys.max() + grow_y + 1)
                x1, x2 = max(0, xs.min() - grow_x), min(width, xs.max() + grow_x + 1)
                frame = frames[index].copy()
                frame[y1:y2, x1:x2] = other[y1:y2, x1:x2]
                frames[index] = frame
        masks[index] = np.zeros_like(masks[index])
    return frames, masks, gap


def score(predictions: list[np.ndarray], truths: list[np.ndarray], gap: range) -> dict[str, float]:
    from vidseg.evaluation import evaluate_sequence

    jf = evaluate_sequence(predictions, truths).jf
    absent = np.mean([not predictions[i].any() for i in gap])
    after = range(gap.stop, min(gap.stop + AFTER_GAP, len(truths)))
    j_after = [
        float((predictions[i] & truths[i]).sum() / max((predictions[i] | truths[i]).sum(), 1))
        for i in after
    ]
    return {"J&F": jf, "absent": float(absent), "reacquired_j": float(np.mean(j_after))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="dis,vidseg-matching,vidseg-previous,vidseg")
    parser.add_argument("--sequences", help="comma-separated val sequences (default: all)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DAVIS, help="DAVIS 2016 root")
    parser.add_argument("--no-write", action="store_true", help="print, don't write the docs")
    args = parser.parse_args(argv)
    from vidseg.evaluation import read_mask

    try:
        methods = [method_spec(key) for key in args.methods.split(",")]
    except ValueError as error:
        parser.error(str(error))
    all_val = read_sequence_list(args.data, "val")
    sequences = args.sequences.split(",") if args.sequences else all_val
    results: dict[str, list[dict[str, float]]] = {m.key: [] for m in methods}
    seconds = dict.fromkeys(results, 0.0)
    frame_count = 0
    for number, sequence in enumerate(sequences):
        frames = list(open_sequence(args.data, sequence))
        annotations = args.data / "Annotations" / "480p" / sequence
        masks = [read_mask(annotations / f"{i:05d}.png") > 0 for i in range(len(frames))]
        other = (
            all_val[(all_val.index(sequence) + 1) % len(all_val)]
            if sequence in all_val
            else all_val[0]
        )
        filler = list(open_sequence(args.data, other, max_frames=30))
        for kind in ("occluder", "cut"):
            rng = np.random.default_rng(number * 2 + (kind == "cut"))
            clip, truths, gap = occluded_clip(frames, masks, filler, kind, rng)
            frame_count += len(clip)
            line = [f"{sequence} {kind} gap {gap.start}-{gap.stop - 1}:"]
            for method in methods:
                start = time.perf_counter()
                predictions = list(method.run(clip, truths[0]))
                seconds[method.key] += time.perf_counter() - start
                result = score(predictions, truths, gap)
                results[method.key].append(result)
                line.append(f"{method.key} {100 * result['J&F']:.1f}/{result['absent']:.2f}")
            print(" ".join(line), file=sys.stderr, flush=True)
    command = "python benchmarks/occlusion.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = "; ".join(f"{k} {v}" for k, v in machine_description().items())
    lines = [
        "## Occlusion and re-identification (DAVIS 2016 val with synthetic gaps)",
        "",
        f"Measured {date.today()} with",
        "",
        "```",
        command.strip(),
        "```",
        "",
        f"{len(sequences)} val sequences, each twice: a 10-30-frame gap after its first third "
        "where the object is hidden by a pasted occluder (a region of another sequence's frame "
        "over its box) or cut away (frames of another sequence). Absent accuracy: share of gap "
        "frames predicted empty. Re-acquired J: mean J over the 10 frames after the gap. "
        f"Machine: {machine}.",
        "",
        "| method | J&F | absent accuracy | re-acquired J | fps |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for method in methods:
        rows = results[method.key]
        lines.append(
            f"| {method.name} | {100 * np.mean([r['J&F'] for r in rows]):.1f} "
            f"| {100 * np.mean([r['absent'] for r in rows]):.1f}% "
            f"| {100 * np.mean([r['reacquired_j'] for r in rows]):.1f} "
            f"| {frame_count / max(seconds[method.key], 1e-9):.1f} |"
        )
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        write_section(BENCHMARKS_MD, SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
