"""Load test of the web app on loopback: simulated users browsing frames and adding prompts.

``vidseg serve`` runs in its own process on a free 127.0.0.1 port; N users (threads, each
with its own HTTP connection and its own session on a DAVIS clip) do what the page does: step
to the next frame (frame JPEG, masks as JSON, masks as PNG when there are any) and, every few
frames, click the object there. Meanwhile one more session propagates the clip over and over,
so browsing is measured while the engine is busy. Reports client-side latency percentiles per
request kind and the number of errors (non-2xx answers or failed connections).

    python benchmarks/web_load.py                     # 8 users, 60 s, writes docs/BENCHMARKS.md
    python benchmarks/web_load.py --users 2 --seconds 10 --no-write
"""

from __future__ import annotations

import argparse
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import av
import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    BENCHMARKS_MD,
    DEFAULT_DAVIS,
    LoadMonitor,
    machine_description,
    write_section,
)

SEQUENCE = "bear"
KINDS = ("frame", "masks", "mask png", "prompt")


def cut_clip(davis: Path, num_frames: int, out_path: Path) -> None:
    """The first ``num_frames`` frames of the DAVIS train clip, as H.264."""
    with av.open(str(davis / "videos" / f"{SEQUENCE}.mp4")) as source:
        with av.open(str(out_path), "w") as output:
            stream = output.add_stream("libx264", rate=24)
            stream.width, stream.height, stream.pix_fmt = 854, 480, "yuv420p"
            stream.options = {"crf": "18", "preset": "veryfast"}
            for _, frame in zip(range(num_frames), source.decode(video=0), strict=False):
                image = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"))
                output.mux(stream.encode(image))
            output.mux(stream.encode())


def object_centres(davis: Path, num_frames: int) -> list[list[int]]:
    """Where to click on each frame: the median pixel of the true mask."""
    centres = []
    for index in range(num_frames):
        path = davis / "Annotations" / "480p" / SEQUENCE / f"{index:05d}.png"
        with Image.open(path) as image:
            labels = np.asarray(image)
        ys, xs = np.nonzero(labels[..., 0] if labels.ndim == 3 else labels)
        centres.append([int(np.median(xs)), int(np.median(ys))])
    return centres


class Recorder:
    """Latencies and errors of every request, from all users."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.messages: list[str] = []
        self._lock = threading.Lock()

    def request(self, client: httpx.Client, kind: str, method: str, url: str, **kwargs):
        started = time.perf_counter()
        try:
            response = client.request(method, url, **kwargs)
            ok = response.is_success
        except httpx.HTTPError as exc:
            response, ok = None, False
            error = f"{kind}: {type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        with self._lock:
            self.latencies[kind].append(elapsed)
            if not ok:
                self.errors[kind] += 1
                if response is not None:
                    error = f"{kind}: HTTP {response.status_code} {response.text[:200]}"
                if len(self.messages) < 10:
                    self.messages.append(error)
        return response if ok else None


def simulated_user(
    base: str, clip: Path, centres: list[list[int]], stop: float, every: int, rec: Recorder
) -> None:
    with httpx.Client(base_url=base, timeout=120) as client:
        session = client.post("/api/sessions", json={"path": str(clip)}).json()["id"]
        api = f"/api/sessions/{session}"
        client.post(f"{api}/objects", json={})
        frame = 0
        while time.monotonic() < stop:
            if frame % every == 0:
                rec.request(
                    client,
                    "prompt",
                    "POST",
                    f"{api}/frames/{frame}/prompts",
                    json={"obj_id": 1, "points": [centres[frame]], "clear": True},
                )
            rec.request(client, "frame", "GET", f"{api}/frames/{frame}.jpg")
            masks = rec.request(client, "masks", "GET", f"{api}/frames/{frame}/masks")
            if masks is not None and any(o["area"] for o in masks.json()["objects"]):
                rec.request(client, "mask png", "GET", f"{api}/frames/{frame}/masks?format=png")
            frame = (frame + 1) % len(centres)


def propagating_user(
    base: str, clip: Path, centres: list[list[int]], stop: float, tracked: list[int]
) -> None:
    """Propagates one session through the clip again and again until ``stop``, adding the
    frames each pass tracked to ``tracked``."""
    with httpx.Client(base_url=base, timeout=120) as client:
        session = client.post("/api/sessions", json={"path": str(clip)}).json()["id"]
        api = f"/api/sessions/{session}"
        client.post(f"{api}/objects", json={})
        client.post(f"{api}/frames/0/prompts", json={"obj_id": 1, "points": [centres[0]]})
        while time.monotonic() < stop:
            client.post(f"{api}/propagation", json={}).raise_for_status()
            while (job := client.get(f"{api}/propagation").json())["state"] == "running":
                if time.monotonic() >= stop:
                    client.delete(f"{api}/propagation")
                time.sleep(0.1)
            tracked.append(job["done"])


def start_server(data_dir: Path, clip_dir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "vidseg.cli.main", "serve", "--port", str(port),
        "--data-dir", str(data_dir), "--allow-dir", str(clip_dir),
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"vidseg serve exited: {server.stderr.read().decode()}")
        try:
            httpx.get(f"{base}/api/sessions", timeout=5)
            return server, base
        except httpx.TransportError:
            if time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("vidseg serve did not start within 120 s") from None
            time.sleep(0.2)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(values: list[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.asarray(values) * 1000, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=8, help="simulated browsing users")
    parser.add_argument("--seconds", type=float, default=60, help="how long they browse")
    parser.add_argument("--frames", type=int, default=30, help="frames of the clip")
    parser.add_argument("--prompt-every", type=int, default=10, help="a click every N frames")
    parser.add_argument(
        "--no-propagation", action="store_true", help="no session propagating meanwhile"
    )
    parser.add_argument("--davis", type=Path, default=DEFAULT_DAVIS)
    parser.add_argument("--no-write", action="store_true", help="print, do not write the doc")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        clip = scratch_dir / f"{SEQUENCE}.mp4"
        cut_clip(args.davis, args.frames, clip)
        centres = object_centres(args.davis, args.frames)
        server, base = start_server(scratch_dir / "data", scratch_dir)
        rec = Recorder()
        try:
            stop = time.monotonic() + args.seconds
            threads = [
                threading.Thread(
                    target=simulated_user, args=(base, clip, centres, stop, args.prompt_every, rec)
                )
                for _ in range(args.users)
            ]
            tracked: list[int] = []
            if not args.no_propagation:
                threads.append(
                    threading.Thread(
                        target=propagating_user, args=(base, clip, centres, stop, tracked)
                    )
                )
            started = time.monotonic()
            with LoadMonitor() as load:
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            elapsed = time.monotonic() - started
            rss = peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)

    rows = []
    for kind in KINDS:
        values = rec.latencies.get(kind)
        if not values:
            continue
        p50, p95, p99 = percentiles(values)
        rows.append(
            f"| {kind} | {len(values)} | {p50:.0f} | {p95:.0f} | {p99:.0f} | {rec.errors[kind]} |"
        )
    total_errors = sum(rec.errors.values())
    command = "python benchmarks/web_load.py" + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:])
        if (argv if argv is not None else sys.argv[1:])
        else ""
    )
    machine = machine_description()
    requests = sum(len(v) for v in rec.latencies.values())
    propagation = (
        "none"
        if args.no_propagation
        else f"one more session propagated the clip over and over, tracking {sum(tracked)} "
        f"frames ({sum(tracked) / elapsed:.1f} per second)"
    )
    body = f"""## Web app under load (loopback)

`{command}`, {date.today().isoformat()}, on {machine["cpu"]} ({machine["usable cpus"]} usable
CPUs); {load.describe()}. `vidseg serve` in its own process;
{args.users} simulated users, each a thread with its own connection and its own session on
the first {args.frames} frames of DAVIS `{SEQUENCE}` (854x480), for {args.seconds:g} s: each
steps through the frames as the page does (frame JPEG, masks as JSON, masks as PNG when
any) and clicks the bear every {args.prompt_every} frames. Meanwhile: {propagation}.
Latencies are measured by the client, in milliseconds.

| request | count | p50 ms | p95 ms | p99 ms | errors |
| --- | ---: | ---: | ---: | ---: | ---: |
{chr(10).join(rows)}

{requests} requests in {elapsed:.1f} s ({requests / elapsed:.1f} per second), {total_errors}
errors; server peak RSS {rss:.0f} MB (one engine shared by every session)."""
    if rec.messages:
        body += "\n\nFirst errors:\n\n" + "\n".join(f"- `{m}`" for m in rec.messages)
    print(body)
    if not args.no_write:
        write_section(BENCHMARKS_MD, "web-load", body)
        print(f"\nwritten to {BENCHMARKS_MD}")


if __name__ == "__main__":
    main()
