"""Benchmark tracking methods on DAVIS 2016 val, prompted with each sequence's first-frame mask.

    python benchmarks/davis.py                       # every available method, all val sequences
    python benchmarks/davis.py --split train         # the train sequences (overfitting check)
    python benchmarks/davis.py --methods copy,dis    # the two baselines
    python benchmarks/davis.py --sequences blackswan,camel --max-frames 20 --no-write

Each method runs in its own subprocess (this script with ``--worker``), so that its peak
resident memory is its own. For each method: J&F, J and F (DAVIS protocol, mean over
sequences), frames per second at 854x480 (wall time over all frames, frame reading included;
also without it, "method only") and peak RSS (read before scoring, so evaluation memory does not
count). Results go to the ``davis`` section of docs/BENCHMARKS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import vidseg  # noqa: F401
except ImportError:  # running from a checkout without an installed vidseg
    sys.path.insert(0, str(HERE.parent / "src"))

from baselines import METHODS, MethodUnavailable, method_spec  # noqa: E402
from common import (  # noqa: E402
    BENCHMARKS_MD,
    DEFAULT_DAVIS,
    machine_description,
    open_sequence,
    read_sequence_list,
    write_section,
)

SECTION = "davis"
#: Reference J&F (x100) on the 15 val sequences of ../shared (from its README).
REFERENCE_JF = {"copy": 25.1, "dis": 38.6}


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class _EncodedMasks(Sequence):
    """Boolean masks kept PNG-encoded (a few KB each, so that holding a whole run's output
    for scoring barely shows in the peak RSS), decoded one at a time."""

    def __init__(self) -> None:
        self.encoded: list[np.ndarray] = []

    def append(self, mask: np.ndarray) -> None:
        ok, buffer = cv2.imencode(".png", mask.view(np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:  # pragma: no cover
            raise RuntimeError("cannot encode a mask")
        self.encoded.append(buffer)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index):  # type: ignore[override]
        return cv2.imdecode(self.encoded[index], cv2.IMREAD_UNCHANGED).view(bool)


def run_worker(args: argparse.Namespace) -> dict:
    """Run one method over the sequences, then score it; returns the JSON-able results."""
    from vidseg.evaluation import EvaluationReport, evaluate_sequence, read_mask
    from vidseg.evaluation.davis import _MaskFiles

    spec = method_spec(args.worker)
    start_rss = peak_rss_mb()
    runs = {}
    for seq in args.sequences:
        frames = open_sequence(args.data, seq, args.max_frames)
        gt_paths = sorted((args.data / "Annotations" / "480p" / seq).glob("*.png"))
        gt_paths = gt_paths[: len(frames)]
        if len(gt_paths) != len(frames):
            raise SystemExit(f"{seq}: {len(frames)} frames but {len(gt_paths)} masks")
        first_mask = read_mask(gt_paths[0]) != 0
        shape = first_mask.shape
        masks = _EncodedMasks()
        paused = 0.0
        start = time.perf_counter()
        for mask in spec.run(frames, first_mask):
            pause = time.perf_counter()
            if mask.shape != shape or mask.dtype != bool:
                raise SystemExit(f"{spec.name} yielded a {mask.dtype} {mask.shape} mask on {seq}")
            masks.append(mask)
            paused += time.perf_counter() - pause
        seconds = time.perf_counter() - start - paused
        if len(masks) != len(frames):
            raise SystemExit(f"{spec.name} yielded {len(masks)} masks for {len(frames)} frames")
        runs[seq] = (masks, gt_paths, seconds, frames.read_seconds)
        print(
            f"[{args.worker}] {seq}: {len(frames)} frames in {seconds:.1f} s "
            f"({len(frames) / seconds:.1f} fps)",
            file=sys.stderr,
            flush=True,
        )
    peak = peak_rss_mb()  # before scoring: evaluation memory is not the method's

    report = EvaluationReport(sequences={})
    out: dict = {"method": args.worker, "name": spec.name, "sequences": {}}
    for seq, (masks, gt_paths, seconds, read_seconds) in runs.items():
        scores = evaluate_sequence(masks, _MaskFiles(gt_paths), name=seq)
        report.sequences[seq] = scores
        out["sequences"][seq] = {
            "frames": len(masks),
            "seconds": seconds,
            "read_seconds": read_seconds,
            **scores.measures(),
        }
    out["mean"] = report.mean()
    out["peak_rss_mb"] = peak
    out["start_rss_mb"] = start_rss
    return out


def run_method_subprocess(key: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            key,
            "--json",
            str(out),
            "--data",
            str(args.data),
            "--sequences",
            ",".join(args.sequences),
            "--split",
            args.split,
        ]
        if args.max_frames:
            command += ["--max-frames", str(args.max_frames)]
        subprocess.run(command, check=True)
        return json.loads(out.read_text())


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def render(results: list[dict], args: argparse.Namespace, command: str) -> str:
    machine = machine_description()
    total_frames = sum(s["frames"] for s in results[0]["sequences"].values())
    lines = [
        f"## DAVIS 2016 {args.split} (first-frame mask prompt)",
        "",
        f"Measured {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} with",
        "",
        "```",
        command,
        "```",
        "",
        f"{len(args.sequences)} sequences, {total_frames} frames at 854x480"
        + (f" (first {args.max_frames} of each)" if args.max_frames else "")
        + ". DAVIS protocol (`vidseg.evaluation`): frames 1..n-2 scored, J = region IoU, "
        "F = boundary F-measure (tolerance 0.008 of the diagonal), means over sequences, "
        "x100. fps: frames over wall time, frame reading (JPEG or mp4 decoding) included; "
        '"method fps" leaves the reading out. Peak RSS: the method\'s own subprocess, '
        f"before scoring (Python with numpy, OpenCV and PIL loaded, before any method runs: "
        f"{results[0]['start_rss_mb']:.0f} MB). The machine may be shared: fps are indicative.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()) + ".",
        "",
        "| method | J&F | J | F | fps | method fps | peak RSS MB | reference J&F |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        seqs = r["sequences"].values()
        frames = sum(s["frames"] for s in seqs)
        seconds = sum(s["seconds"] for s in seqs)
        method_seconds = seconds - sum(s["read_seconds"] for s in seqs)
        ref = REFERENCE_JF.get(r["method"]) if args.split == "val" and not args.max_frames else None
        lines.append(
            f"| {r['name']} | {pct(r['mean']['J&F'])} | {pct(r['mean']['J-Mean'])} "
            f"| {pct(r['mean']['F-Mean'])} | {frames / seconds:.1f} "
            f"| {frames / max(method_seconds, 1e-9):.1f} | {r['peak_rss_mb']:.0f} "
            f"| {ref if ref is not None else '-'} |"
        )
    lines += [
        "",
        "Per sequence J&F:",
        "",
        "| sequence | frames | " + " | ".join(r["name"] for r in results) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in results) + " |",
    ]
    for seq in args.sequences:
        row = [pct(r["sequences"][seq]["J&F"]) for r in results]
        frames = results[0]["sequences"][seq]["frames"]
        lines.append(f"| {seq} | {frames} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--methods",
        help="comma-separated method keys among " + ", ".join(METHODS) + " (default: all "
        "available), or config variants like vidseg+tracker.weights=run.pt",
    )
    parser.add_argument(
        "--split",
        choices=("val", "train"),
        default="val",
        help="the DAVIS 2016 split to run (default: val); results go to its own section",
    )
    parser.add_argument("--sequences", help="comma-separated sequences (default: the split's)")
    parser.add_argument("--max-frames", type=int, help="use the first N frames of each sequence")
    parser.add_argument("--data", type=Path, default=DEFAULT_DAVIS, help="DAVIS 2016 root")
    parser.add_argument("--no-write", action="store_true", help="print, don't write the docs")
    parser.add_argument("--output", type=Path, default=BENCHMARKS_MD, help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.data = args.data.resolve()
    if not (args.data / "JPEGImages" / "480p").is_dir():
        parser.error(f"no DAVIS 2016 data in {args.data}: pass --data")
    if args.sequences:
        args.sequences = [s for s in args.sequences.split(",") if s]
    else:
        args.sequences = read_sequence_list(args.data, args.split)
    for seq in args.sequences:
        if not (args.data / "Annotations" / "480p" / seq).is_dir():
            parser.error(f"no frames for sequence {seq!r} in {args.data}")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error("--max-frames must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(args)
        args.json.write_text(json.dumps(result))
        return 0

    if args.methods:
        keys = [k for k in args.methods.split(",") if k]
        for key in keys:
            try:
                reason = method_spec(key).unavailable()
            except ValueError as error:
                raise SystemExit(str(error)) from None
            if reason:
                raise SystemExit(f"method {key!r} is unavailable: {reason}")
    else:
        keys = []
        for key, spec in METHODS.items():
            reason = spec.unavailable()
            if reason:
                print(f"skipping {key}: {reason}", file=sys.stderr)
            else:
                keys.append(key)

    results = []
    for key in keys:
        try:
            results.append(run_method_subprocess(key, args))
        except subprocess.CalledProcessError as error:
            raise SystemExit(f"method {key!r} failed (exit {error.returncode})") from error
    argv_shown = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/davis.py " + shlex.join(argv_shown)
    body = render(results, args, command.strip())
    print(body)
    if not args.no_write:
        section = SECTION if args.split == "val" else f"{SECTION}-{args.split}"
        write_section(args.output, section, body)
        print(f"wrote the {section!r} section of {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MethodUnavailable as error:
        sys.exit(str(error))
