"""Interactive segmentation with simulated clicks (the standard NoC protocol), on the first frames
of the DAVIS 2016 val sequences.

Each next click goes to the interior point (farthest from the region's border) of the larger
error region: on a missed object part it is a positive click, on a wrongly included part a
negative one (as in RITM and SimpleClick). Clicks are given through ``TrackingSession.add_points``,
so each one refines the mask the earlier ones gave. Reported: NoC@85 and NoC@90 (clicks needed
to reach IoU 0.85 / 0.90, capped at 20), mean IoU after 1, 3 and 5 clicks, and the IoU of the
mask from the object's tight bounding box alone (``add_box``).

Then corrections in video (``--video``, on by default): one click on the first frame,
propagate through the whole sequence, find the worst frame (lowest J), give it correction
clicks (the same protocol, until IoU 0.85 there or 3 clicks) and propagate again; reported:
J&F before and after the correction, for the default tracker and the previous release's
(``--video-engines``).

    python benchmarks/clicks.py                  # writes the "clicks" section of docs/BENCHMARKS.md
    python benchmarks/clicks.py --sequences blackswan --max-clicks 5 --no-write
    # choosing a prompt-decoder recipe on the train sequences that --hold-out leaves out:
    python benchmarks/clicks.py --split train --frames 5 --no-video --no-write \
        --sequences bus,elephant,kite-walk,motorbike,soccerball,train \
        --engines vidseg-grabcut,vidseg+prompts.weights=a.pt,vidseg+prompts.weights=b.pt

An engine key is one of ``ENGINES`` or one of them with config overrides appended,
``KEY+SECTION.SETTING=VALUE[+...]`` (as in ``davis.py``'s method keys).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import date
from pathlib import Path

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

from vidseg.evaluation.clicks import next_click  # noqa: E402

SECTION = "clicks"


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    union = (prediction | truth).sum()
    return 1.0 if union == 0 else float((prediction & truth).sum() / union)


# Each engine: its name in tables and a function giving its config overrides.
ENGINES = {
    "vidseg": ("vidseg (default: learned prompt decoder)", dict),
    "vidseg-grabcut": (
        "vidseg, feature similarity + GrabCut (default up to 0.7.0)",
        lambda: {"prompts": {"decoder": "grabcut"}},
    ),
}


def click_curve(
    engine, frame: np.ndarray, truth: np.ndarray, max_clicks: int
) -> tuple[list[float], float]:
    """IoU after each of ``max_clicks`` simulated clicks, and seconds per click."""
    from vidseg.errors import PromptError
    from vidseg.session import TrackingSession

    session = TrackingSession(frame[None], engine=engine)
    prediction = np.zeros_like(truth)
    curve = []
    start = time.perf_counter()
    for _ in range(max_clicks):
        (x, y), label = next_click(prediction, truth)
        if label == 0 and not prediction.any():
            break  # nothing left to correct
        try:
            prediction = session.add_points(0, 1, [[x, y]], [label])
        except PromptError:
            break  # the click would empty the mask, which the session refuses
        curve.append(iou(prediction, truth))
    seconds = (time.perf_counter() - start) / max(len(curve), 1)
    curve += [curve[-1] if curve else 0.0] * (max_clicks - len(curve))
    return curve, seconds


def box_iou(engine, frame: np.ndarray, truth: np.ndarray) -> float:
    """IoU of the mask from the object's tight bounding box alone (0 if refused as empty)."""
    from vidseg.errors import PromptError
    from vidseg.session import TrackingSession

    ys, xs = np.nonzero(truth)
    box = [xs.min(), ys.min(), xs.max(), ys.max()]
    try:
        return iou(TrackingSession(frame[None], engine=engine).add_box(0, 1, box), truth)
    except PromptError:
        return 0.0


CORRECTION_CLICKS = 3


def corrected_propagation(engine, frames, truths: list[np.ndarray]) -> tuple[float, float, int]:
    """J&F (DAVIS protocol) of propagating one first-frame click, then again after correction
    clicks on the worst frame; and that frame's index."""
    from vidseg.errors import PromptError
    from vidseg.evaluation import evaluate_sequence
    from vidseg.evaluation.metrics import region_similarity
    from vidseg.session import TrackingSession

    session = TrackingSession(np.stack(frames), engine=engine)
    (x, y), _ = next_click(np.zeros_like(truths[0]), truths[0])
    session.add_points(0, 1, [[x, y]])

    def propagated() -> list[np.ndarray]:
        masks = [np.zeros_like(truths[0])] * len(frames)
        for result in session.propagate(0, "forward"):
            masks[result.frame_index] = result.masks[1]
        return masks

    before = propagated()
    scored = range(1, len(frames) - 1)
    worst = min(scored, key=lambda i: region_similarity(before[i], truths[i]))
    prediction = before[worst]
    for _ in range(CORRECTION_CLICKS):
        if iou(prediction, truths[worst]) >= 0.85:
            break
        (x, y), label = next_click(prediction, truths[worst])
        try:
            prediction = session.add_points(worst, 1, [[x, y]], [label])
        except PromptError:  # the click would empty the mask: the session refuses it
            break
    after = propagated()
    return (
        100 * evaluate_sequence(before, truths).jf,
        100 * evaluate_sequence(after, truths).jf,
        worst,
    )


def clicks_to_reach(curve: list[float], threshold: float, cap: int) -> int:
    return next((i + 1 for i, value in enumerate(curve) if value >= threshold), cap)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("--sequences", help="comma-separated sequences (default: the split's)")
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="comma-separated, among " + ", ".join(ENGINES) + ", each optionally with "
        "+SECTION.SETTING=VALUE config overrides",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DAVIS, help="DAVIS 2016 root")
    parser.add_argument("--no-write", action="store_true", help="print, don't write the docs")
    parser.add_argument(
        "--no-video", action="store_true", help="skip the corrections-in-video part"
    )
    parser.add_argument(
        "--video-engines",
        default=",".join(TRACKER_ENGINES),
        help="engines of the corrections in video, among "
        + ", ".join(TRACKER_ENGINES)
        + ", each optionally with +SECTION.SETTING=VALUE config overrides",
    )
    parser.add_argument(
        "--frames", type=int, default=1, help="evenly spaced frames per sequence (1: the first)"
    )
    args = parser.parse_args(argv)
    if args.max_clicks < 5:
        parser.error(f"--max-clicks {args.max_clicks}: the table reports mIoU@5, use 5 or more")
    from vidseg.evaluation import read_mask

    sequences = (
        args.sequences.split(",") if args.sequences else read_sequence_list(args.data, args.split)
    )
    inputs = []
    for sequence in sequences:
        frames = open_sequence(args.data, sequence)
        for index in np.linspace(0, len(frames) - 1, args.frames).round().astype(int):
            truth = read_mask(args.data / "Annotations" / "480p" / sequence / f"{index:05d}.png")
            name = sequence if args.frames == 1 else f"{sequence}/{index}"
            inputs.append((name, frames[index], truth > 0))
    cap = args.max_clicks
    summary, rows = [], {}
    try:
        engines = built_engines(args.engines, ENGINES)
    except ValueError as error:
        parser.error(str(error))
    for key, (name, engine) in engines.items():
        curves, timings = [], []
        for sequence, frame, truth in inputs:
            curve, seconds = click_curve(engine, frame, truth, cap)
            curves.append(curve)
            timings.append(seconds)
            rows.setdefault(sequence, []).append(
                f"{100 * curve[0]:.1f} / {clicks_to_reach(curve, 0.85, cap)} "
                f"/ {clicks_to_reach(curve, 0.90, cap)}"
            )
            print(f"[{key}] {sequence}: {rows[sequence][-1]}", file=sys.stderr, flush=True)
        curves_array = np.array(curves)
        noc85 = np.mean([clicks_to_reach(c, 0.85, cap) for c in curves])
        noc90 = np.mean([clicks_to_reach(c, 0.90, cap) for c in curves])
        miou = [100 * curves_array[:, k - 1].mean() for k in (1, 3, 5)]
        box = 100 * np.mean([box_iou(engine, frame, truth) for _, frame, truth in inputs])
        summary.append(
            f"| {name} | {noc85:.2f} | {noc90:.2f} | "
            + " | ".join(f"{v:.1f}" for v in miou)
            + f" | {box:.1f} | {np.mean(timings):.2f} |"
        )
    video_lines = []
    if not args.no_video:
        try:
            video_engines = list(built_engines(args.video_engines, TRACKER_ENGINES).values())
        except ValueError as error:
            parser.error(str(error))
        before_after = []  # per sequence, per engine: (before, after)
        for sequence in sequences:
            frames = list(open_sequence(args.data, sequence))
            truths = [
                read_mask(path) > 0
                for path in sorted((args.data / "Annotations" / "480p" / sequence).glob("*.png"))
            ]
            cells, scores = [], []
            for _, engine in video_engines:
                before, after, worst = corrected_propagation(engine, frames, truths)
                scores.append((before, after))
                cells.append(f"{worst} | {before:.1f} | {after:.1f}")
            before_after.append(scores)
            video_lines.append(f"| {sequence} | " + " | ".join(cells) + " |")
            print(f"[video] {video_lines[-1]}", file=sys.stderr, flush=True)
        means = np.mean(before_after, axis=0)  # (engines, 2)
        video_lines = [
            "### Corrections in video",
            "",
            "One click on the first frame (the protocol's first click), propagated forward "
            "through the sequence; then correction clicks on the worst frame (lowest J; the "
            f"protocol's clicks until IoU 0.85 there, at most {CORRECTION_CLICKS}, stopping at "
            "a click that would empty the mask, which the session refuses) and a new "
            "propagation, in which both frames' prompts condition the tracking. J&F over the "
            "sequence (DAVIS protocol); per engine, the worst frame, J&F after one click and "
            "J&F after the correction:",
            "",
            "| sequence | "
            + " | ".join(
                f"{name}: worst frame | one click | corrected" for name, _ in video_engines
            )
            + " |",
            "| --- | " + " | ".join("---: | ---: | ---:" for _ in video_engines) + " |",
            *video_lines,
            "| **mean** | "
            + " | ".join(f"| **{before:.1f}** | **{after:.1f}**" for before, after in means)
            + " |",
            "",
        ]
    command = "python benchmarks/clicks.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = "; ".join(f"{k} {v}" for k, v in machine_description().items())
    body = "\n".join(
        [
            f"## Click to mask: simulated clicks on DAVIS 2016 {args.split} first frames",
            "",
            f"Measured {date.today()} with",
            "",
            "```",
            command.strip(),
            "```",
            "",
            (
                f"{len(sequences)} first frames"
                if args.frames == 1
                else f"{len(inputs)} frames ({args.frames} per sequence)"
            )
            + " at 854x480. Each click goes to the interior of the "
            "larger error region (positive on a missed part, negative on a wrong one), through "
            "`TrackingSession.add_points`. NoC@k: clicks to reach IoU k% (capped at "
            f"{cap}); mIoU@n: mean IoU after n clicks; box IoU: the mask from the object's "
            f"tight box alone. Machine: {machine}.",
            "",
            "| engine | NoC@85 | NoC@90 | mIoU@1 | mIoU@3 | mIoU@5 | box IoU | s per click |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *summary,
            "",
            "Per sequence, IoU@1 / NoC@85 / NoC@90, engines in the order above:",
            "",
            "| sequence | " + " | ".join(engines) + " |",
            "| --- | " + " | ".join("---:" for _ in engines) + " |",
            *[f"| {sequence} | " + " | ".join(cells) + " |" for sequence, cells in rows.items()],
            "",
            *video_lines,
        ]
    )
    print(body)
    if not args.no_write:
        write_section(
            BENCHMARKS_MD, SECTION if args.split == "val" else f"{SECTION}-{args.split}", body
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
