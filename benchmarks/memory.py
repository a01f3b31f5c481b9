"""Peak memory and end-to-end speed of ``vidseg track`` as the video grows.

A real DAVIS clip is looped into a 200-frame and a 2,000-frame 854x480 H.264 video; each is
tracked (one object, first-frame mask prompt, forward) by the ``vidseg`` command in its own
process, writing PNG masks, so the figures include decoding and writing. Peak RSS must stay
flat: the 2,000-frame run within 10% of the 200-frame run.

    python benchmarks/memory.py                 # both lengths, writes docs/BENCHMARKS.md
    python benchmarks/memory.py --lengths 200 --no-write
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import av
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCHMARKS_MD, DEFAULT_DAVIS, machine_description, write_section  # noqa: E402


def looped_video(clip: Path, num_frames: int, out_path: Path) -> None:
    """Write ``num_frames`` frames of ``clip`` played forward then backward, over and over
    (a ping-pong loop, so that the motion has no jump at the seam)."""
    with av.open(str(clip)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    with av.open(str(out_path), "w") as output:
        stream = output.add_stream("libx264", rate=24)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frames[order[i % len(order)]], format="rgb24")
            output.mux(stream.encode(frame))
        output.mux(stream.encode())


def run_track(video: Path, mask: Path, out_dir: Path) -> dict:
    """Run ``vidseg track`` in a child process; its wall time and peak RSS."""
    command = [
        sys.executable,
        "-m",
        "vidseg.cli.main",
        "track",
        str(video),
        "--mask",
        str(mask),
        "--out",
        str(out_dir),
        "--direction",
        "forward",
        "--quiet",
    ]
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"vidseg track failed: {completed.stderr.strip()}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb < before:  # ru_maxrss is the largest child so far: runs go from short to long
        raise SystemExit("peak RSS went down: run the lengths in increasing order")
    return {"seconds": seconds, "peak_rss_mb": peak_kb / 1024, "command": shlex.join(command[1:])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", default="bear", help="train clip in videos/ to loop")
    parser.add_argument("--lengths", default="200,2000", help="frame counts, increasing")
    parser.add_argument("--data", type=Path, default=DEFAULT_DAVIS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    lengths = sorted(int(n) for n in args.lengths.split(","))
    clip = args.data / "videos" / f"{args.clip}.mp4"
    gt = np.array(Image.open(args.data / "Annotations" / "480p" / args.clip / "00000.png"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mask_path = Path(tmp) / "mask.png"
        Image.fromarray(((gt[..., 0] if gt.ndim == 3 else gt) > 0).astype(np.uint8) * 255).save(
            mask_path
        )
        for length in lengths:
            video = Path(tmp) / f"{args.clip}-{length}.mp4"
            looped_video(clip, length, video)
            # Each length in a fresh child; RUSAGE_CHILDREN keeps the maximum over children,
            # and lengths increase, so the reading after each run is that run's peak
            # unless an earlier, shorter run used more (which would itself be the finding).
            result = run_track(video, mask_path, Path(tmp) / f"masks-{length}")
            result.update(frames=length, fps=length / result["seconds"])
            rows.append(result)
            print(json.dumps(result), flush=True)
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    machine = machine_description()
    lines = [
        "## Memory and end-to-end speed on long videos",
        "",
        f"`python benchmarks/memory.py --lengths {args.lengths}`, {date.today()}, on "
        f"{machine['cpu']} ({machine['usable cpus']} usable CPUs). Clip `{args.clip}` "
        "looped ping-pong to 854x480 H.264; one object, first-frame mask, forward; each run is "
        "`vidseg track VIDEO --mask MASK --out DIR` in its own process (decoding and PNG "
        "writing included).",
        "",
        "| frames | seconds | fps (end to end) | peak RSS MB |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['frames']} | {row['seconds']:.1f} | {row['fps']:.2f} | "
            f"{row['peak_rss_mb']:.0f} |"
        )
    lines += ["", f"Peak RSS ratio, longest / shortest: {ratio:.3f}."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(BENCHMARKS_MD, "memory", body)


if __name__ == "__main__":
    main()
