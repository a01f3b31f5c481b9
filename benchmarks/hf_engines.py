"""The transformers backends next to the built-in engine: per-frame time and peak RSS on
854x480 frames, and peak RSS as the video grows.

Random weights (``vidseg.engines.hf.save_random_model``) cost the same time as trained ones,
and nothing is downloaded. Sizes: ``full`` is transformers' default configuration of the
family, i.e. SAM 2.1 hiera-tiny's architecture, and EdgeTAM's memory attention and spatial
perceiver with the Hiera-tiny image encoder standing in for its RepViT (which needs timm,
hence torchvision, not installable beside the CPU torch here); ``tiny`` is the test models'
configuration (64x64 input, about a million parameters), used for the long-video RSS runs,
where the full-size models would take hours on this CPU.

Every measurement runs in its own process, which reports its own peak RSS.

    python benchmarks/hf_engines.py                     # writes docs/BENCHMARKS.md
    python benchmarks/hf_engines.py --timed-frames 2 --lengths 200 --no-write
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    BENCHMARKS_MD,
    DEFAULT_DAVIS,
    LoadMonitor,
    machine_description,
    open_sequence,
    write_section,
)
from memory import looped_video  # noqa: E402

CLIP = "bear"
RSS_ENGINES = ("sam2", "edgetam")
ENGINES = {
    "builtin": "vidseg built-in engine",
    "sam2": "SAM 2.1 hiera-tiny-sized (random weights)",
    "edgetam": "EdgeTAM-sized, Hiera-tiny encoder (random weights)",
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def first_mask(data: Path) -> np.ndarray:
    annotation = np.array(Image.open(data / "Annotations" / "480p" / CLIP / "00000.png"))
    return (annotation[..., 0] if annotation.ndim == 3 else annotation) > 0


def load(engine: str, size: str, folder: Path):
    """The engine to measure: built-in, or a random-weight checkpoint loaded by path."""
    from vidseg.engines.loading import load_engine

    if engine == "builtin":
        return load_engine("builtin"), None
    from vidseg.engines.hf import save_random_model

    checkpoint = save_random_model(engine, folder, size=size)
    return load_engine(str(checkpoint)), checkpoint


def child_time(engine: str, frames: int, data: Path) -> dict:
    """In a child: track ``frames`` frames of the clip forward from a first-frame mask."""
    from vidseg.session import TrackingSession

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        loaded, _ = load(engine, "full", Path(tmp))
        load_seconds = time.perf_counter() - start
        session = TrackingSession(open_sequence(data, CLIP, max_frames=frames), engine=loaded)
        session.add_mask(0, 1, first_mask(data))
        times, last = [], time.perf_counter()
        for _ in session.propagate():
            now = time.perf_counter()
            times.append(now - last)
            last = now
    tracked = times[1:]  # frame 0 is the prompted frame: it carries the prompt's encoding
    return {
        "engine": engine,
        "frames": frames,
        "load_seconds": load_seconds,
        "seconds_per_frame": statistics.median(tracked),
        "first_frame_seconds": times[0],
        "peak_rss_mb": peak_rss_mb(),
        "stages": {k: round(v, 2) for k, v in session.engine_stage_seconds.items()},
    }


def child_track(engine: str, video: Path, mask: Path, out: Path) -> dict:
    """In a child: ``vidseg track VIDEO --mask MASK --model ... --out DIR`` end to end."""
    from vidseg.cli.main import main

    with tempfile.TemporaryDirectory() as tmp:
        model = "builtin"
        if engine != "builtin":
            from vidseg.engines.hf import save_random_model

            model = str(save_random_model(engine, tmp, size="tiny"))
        args = ["track", str(video), "--mask", str(mask), "--out", str(out), "--model", model]
        start = time.perf_counter()
        code = main([*args, "--direction", "forward", "--quiet"])
        seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"vidseg track failed with status {code}")
    return {"engine": engine, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def read_log(log: Path, lengths: list[int]) -> tuple[dict, dict]:
    """The results an earlier run printed (one JSON object a line), for ``--from-log``: the
    timing runs, then the RSS runs in the order they are made."""
    results = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    timing = {r["engine"]: r for r in results if "seconds_per_frame" in r}
    runs = [r for r in results if "seconds_per_frame" not in r]
    order = [(engine, length) for length in lengths for engine in RSS_ENGINES]
    rss = {}
    for (engine, length), result in zip(order, runs, strict=False):
        rss[(engine, length)] = {**result, "fps": length / result["seconds"]}
    return timing, rss


def run_child(*args: str) -> dict:
    """Run this script in child mode; its last stdout line is its JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{completed.stderr.strip()[-2000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timed-frames", type=int, default=5, help="frames per timing run")
    parser.add_argument("--builtin-frames", type=int, default=30)
    parser.add_argument("--lengths", default="200,2000", help="video lengths for the RSS runs")
    parser.add_argument("--data", type=Path, default=DEFAULT_DAVIS)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--from-log",
        type=Path,
        metavar="LOG",
        help="write the section from what an interrupted run printed (give its arguments too)",
    )
    parser.add_argument("--child-time", metavar="ENGINE", help=argparse.SUPPRESS)
    parser.add_argument("--child-track", nargs=4, metavar="X", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_time:
        frames = args.builtin_frames if args.child_time == "builtin" else args.timed_frames
        print(json.dumps(child_time(args.child_time, frames, args.data)))
        return
    if args.child_track:
        engine, video, mask, out = args.child_track
        print(json.dumps(child_track(engine, Path(video), Path(mask), Path(out))))
        return

    lengths = [int(n) for n in args.lengths.split(",")]
    if args.from_log:
        timing, rss = read_log(args.from_log, lengths)
        body = report(args, timing, rss, lengths, None)
        print(body)
        if not args.no_write:
            write_section(BENCHMARKS_MD, "hf-engines", body)
        return
    started = time.perf_counter()
    with LoadMonitor() as load, tempfile.TemporaryDirectory() as tmp:
        timing = {engine: run_child("--child-time", engine, *_common(args)) for engine in ENGINES}
        rss: dict[tuple[str, int], dict] = {}
        mask_path = Path(tmp) / "mask.png"
        Image.fromarray(first_mask(args.data).astype(np.uint8) * 255).save(mask_path)
        for length in lengths:
            video = Path(tmp) / f"{CLIP}-{length}.mp4"
            looped_video(args.data / "videos" / f"{CLIP}.mp4", length, video)
            for engine in RSS_ENGINES:
                out = Path(tmp) / f"masks-{engine}-{length}"
                result = run_child("--child-track", engine, str(video), str(mask_path), str(out))
                result["fps"] = length / result["seconds"]
                rss[(engine, length)] = result
    total_minutes = (time.perf_counter() - started) / 60
    body = report(args, timing, rss, lengths, total_minutes, load)
    print(body)
    if not args.no_write:
        write_section(BENCHMARKS_MD, "hf-engines", body)


def _common(args: argparse.Namespace) -> list[str]:
    return [
        "--timed-frames",
        str(args.timed_frames),
        "--builtin-frames",
        str(args.builtin_frames),
        "--data",
        str(args.data),
    ]


def report(
    args,
    timing: dict,
    rss: dict,
    lengths: list[int],
    total_minutes: float | None,
    load: LoadMonitor | None = None,
) -> str:
    import torch

    load_text = f"; {load.describe()}" if load else ""

    machine = machine_description()
    builtin = timing["builtin"]
    command = (
        f"python benchmarks/hf_engines.py --timed-frames {args.timed_frames} --builtin-frames "
        f"{args.builtin_frames} --lengths {args.lengths}"
    )
    if total_minutes is None:
        how = (
            f"`{command}`, stopped during its last run; this section written from what it "
            f"printed with `{command} --from-log LOG`"
        )
    else:
        how = f"`{command}`, {total_minutes:.0f} minutes in all"
    lines = [
        "## SAM 2.1 and EdgeTAM (transformers) next to the built-in engine",
        "",
        f"{how}; {date.today()}, on {machine['cpu']} "
        f"({machine['usable cpus']} usable CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads){load_text}. "
        "Random weights, nothing downloaded (they cost the same time "
        "as trained ones). Clip `bear` (DAVIS, 854x480), one object, first-frame mask, forward; "
        "each row is its own process.",
        "",
        "Per-frame time: median over the tracked frames (the prompted frame excluded), "
        "decoding included; peak RSS of the whole process. SAM 2's memory bank fills up over "
        "the first 7 frames, so with few timed frames the median is a little below the "
        "steady-state cost.",
        "",
        "| engine | input | frames | s per frame | x built-in | peak RSS MB | x built-in |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    inputs = {"builtin": "854x480", "sam2": "1024x1024", "edgetam": "1024x1024"}
    for engine, row in timing.items():
        lines.append(
            f"| {ENGINES[engine]} | {inputs[engine]} | {row['frames']} | "
            f"{row['seconds_per_frame']:.2f} | "
            f"{row['seconds_per_frame'] / builtin['seconds_per_frame']:.0f} | "
            f"{row['peak_rss_mb']:.0f} | {row['peak_rss_mb'] / builtin['peak_rss_mb']:.1f} |"
        )
    lines += [
        "",
        "Where the time goes (seconds, summed over the run): "
        + "; ".join(
            f"{engine}: " + ", ".join(f"{k} {v:g}" for k, v in row["stages"].items())
            for engine, row in timing.items()
        )
        + ".",
        "",
        "Memory as the video grows: `vidseg track VIDEO --mask MASK --model DIR --out DIR` end "
        "to end (mp4 decoding, PNG writing), on the clip looped ping-pong to each length, with "
        "the tiny random models (64x64 input): the full-size ones run at the speed above, "
        "hours for 2,000 frames on this CPU. The tracker keeps the same state per frame "
        "whatever the model size: the memory bank's last frames and the prompted frames, "
        "nothing per frame seen (tests/test_hf_engines.py checks the inference session's "
        "contents frame by frame). The built-in engine's figures for the same runs are in "
        "the memory section.",
        "",
        "| model | " + " | ".join(f"{n} frames: peak RSS MB (fps)" for n in lengths) + " | ratio |",
        "| --- | " + " | ".join("---:" for _ in lengths) + " | ---: |",
    ]
    for engine in RSS_ENGINES:
        runs = [rss.get((engine, n)) for n in lengths]
        cells = [
            "not finished" if r is None else f"{r['peak_rss_mb']:.0f} ({r['fps']:.1f})"
            for r in runs
        ]
        done = [r for r in runs if r is not None]
        ratio = (
            f"{done[-1]['peak_rss_mb'] / done[0]['peak_rss_mb']:.3f}"
            if len(done) == len(runs) > 1
            else "-"
        )
        lines.append(f"| {engine} (tiny) | " + " | ".join(cells) + f" | {ratio} |")
    if len(rss) < len(lengths) * len(RSS_ENGINES):
        lines += [
            "",
            "A run marked not finished was stopped: the shared machine had slowed to about "
            "half a frame per second, too slow to finish it in the time there was.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
