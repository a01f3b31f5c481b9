"""The web app's JSON API, through FastAPI's TestClient, with the real built-in engine on a short
synthetic clip whose true masks are known: clicks, boxes, propagation with progress events,
cancellation, exports, persistence across restarts and crashes, and bad input."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra is not installed: pip install '.[web]'")
from fastapi.testclient import TestClient  # noqa: E402

from vidseg.demo.synthetic import render_synthetic_video, write_mp4  # noqa: E402
from vidseg.engines.builtin import BuiltinEngine  # noqa: E402
from vidseg.outputs import decode_rle, read_coco_masks  # noqa: E402
from vidseg.web import create_app  # noqa: E402

WIDTH, HEIGHT, NUM_FRAMES = 160, 96, 12


def interior_point(mask: np.ndarray) -> list[int]:
    """The pixel of ``mask`` farthest from its edge: a click surely on the object."""
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    return [int(x), int(y)]


def bounding_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def object_mask(frame_masks: dict, obj_id: int) -> np.ndarray:
    found = [o for o in frame_masks["objects"] if o["obj_id"] == obj_id]
    assert found, f"object {obj_id} has no mask on frame {frame_masks['frame_index']}"
    return decode_rle(found[0]["rle"])


def wait_for_job(client: TestClient, session_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/sessions/{session_id}/propagation").json()
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError(f"the propagation did not end within {timeout} s")


class GatedEngine:
    """The real engine, whose trackers take a permit from ``gate`` before each frame: the test
    decides exactly how far a propagation gets."""

    name = "gated"

    def __init__(self, engine: BuiltinEngine) -> None:
        self.engine = engine
        self.gate = threading.Semaphore(0)

    def mask_from_prompt(self, frame, prompt, previous=None):
        return self.engine.mask_from_prompt(frame, prompt, previous)

    def new_tracker(self, info, *, reverse=False):
        tracker, gate = self.engine.new_tracker(info, reverse=reverse), self.gate

        class GatedTracker:
            def remember(self, *args, **kwargs):
                tracker.remember(*args, **kwargs)

            def predict(self, *args, **kwargs):
                assert gate.acquire(timeout=60), "the test never opened the gate"
                return tracker.predict(*args, **kwargs)

        return GatedTracker()


@pytest.fixture(scope="module")
def engine() -> BuiltinEngine:
    return BuiltinEngine.shared()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory):
    """A 12-frame 160x96 synthetic mp4 with two objects, and its true labels."""
    folder = tmp_path_factory.mktemp("videos")
    video = render_synthetic_video(
        num_frames=NUM_FRAMES, width=WIDTH, height=HEIGHT, num_objects=2, seed=3
    )
    return folder, write_mp4(folder / "clip.mp4", video.frames, video.fps), video.labels


def open_clip(client: TestClient, path: Path) -> str:
    response = client.post("/api/sessions", json={"path": str(path)})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_click_propagate_with_progress_events_and_export(clip, engine, tmp_path):
    folder, path, labels = clip
    with TestClient(create_app(tmp_path / "data", engine, allow_dirs=[folder])) as client:
        assert client.get("/api/videos").json()[0]["path"] == str(path)
        session_id = open_clip(client, path)
        obj = client.post(f"/api/sessions/{session_id}/objects", json={"name": "star"}).json()
        assert obj == {"id": 1, "name": "star", "color": "#800000"}

        truth = labels[0] == 1
        clicked = client.post(
            f"/api/sessions/{session_id}/frames/0/prompts",
            json={"obj_id": 1, "points": [interior_point(truth)]},
        )
        assert clicked.status_code == 200, clicked.text
        assert iou(object_mask(clicked.json(), 1), truth) > 0.5

        started = client.post(
            f"/api/sessions/{session_id}/propagation", json={"direction": "forward"}
        )
        assert started.status_code == 202 and started.json()["total"] == NUM_FRAMES
        with client.stream("GET", f"/api/sessions/{session_id}/propagation/events") as events:
            progress = [
                json.loads(line[len("data: ") :])
                for line in events.iter_lines()
                if line.startswith("data: ")
            ]
        assert progress[-1]["state"] == "done" and progress[-1]["done"] == NUM_FRAMES
        assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)

        session = client.get(f"/api/sessions/{session_id}").json()
        assert session["done_frames"] == list(range(NUM_FRAMES))
        frames = client.get(f"/api/sessions/{session_id}/frames").json()
        assert [(f["index"], f["prompted"], f["tracked"]) for f in frames[:2]] == [
            (0, True, True),
            (1, False, True),
        ]
        last = client.get(f"/api/sessions/{session_id}/frames/{NUM_FRAMES - 1}/masks").json()
        assert last["objects"][0]["source"] == "tracked"
        assert iou(object_mask(last, 1), labels[-1] == 1) > 0.3

        png = client.get(f"/api/sessions/{session_id}/frames/5/masks?format=png")
        assert png.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(png.content)) as image:
            assert image.mode == "P" and image.size == (WIDTH, HEIGHT)
            assert set(np.unique(np.asarray(image)).tolist()) == {0, 1}
        frame = client.get(f"/api/sessions/{session_id}/frames/5.jpg")
        assert frame.headers["content-type"] == "image/jpeg"
        decoded = cv2.imdecode(np.frombuffer(frame.content, np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape == (HEIGHT, WIDTH, 3)

        archive = client.get(f"/api/sessions/{session_id}/export/masks.zip")
        with zipfile.ZipFile(io.BytesIO(archive.content)) as masks:
            names = sorted(masks.namelist())
            assert names == [f"clip/{i:05d}.png" for i in range(NUM_FRAMES)]
            with Image.open(masks.open(names[-1])) as image:
                exported = np.asarray(image) == 1
        assert (exported == object_mask(last, 1)).all()

        coco_path = tmp_path / "coco.json"
        coco_path.write_bytes(client.get(f"/api/sessions/{session_id}/export/coco.json").content)
        coco = read_coco_masks(coco_path)
        assert (coco[NUM_FRAMES - 1][1] == exported).all()

        overlay_path = tmp_path / "overlay.mp4"
        overlay = client.get(f"/api/sessions/{session_id}/export/overlay.mp4")
        assert overlay.headers["content-type"] == "video/mp4"
        overlay_path.write_bytes(overlay.content)
        with av.open(str(overlay_path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == NUM_FRAMES


def test_session_survives_a_restart_with_every_prompt_and_mask(clip, engine, tmp_path):
    folder, path, labels = clip
    data = tmp_path / "data"
    with TestClient(create_app(data, engine, allow_dirs=[folder])) as client:
        session_id = open_clip(client, path)
        api = f"/api/sessions/{session_id}"
        for name in ("star", "blob", "spare"):
            client.post(f"{api}/objects", json={"name": name})
        client.post(
            f"{api}/frames/0/prompts",
            json={"obj_id": 1, "points": [interior_point(labels[0] == 1)]},
        )
        client.post(
            f"{api}/frames/0/prompts", json={"obj_id": 2, "box": bounding_box(labels[0] == 2)}
        )
        client.patch(f"{api}/objects/3", json={"name": "renamed"})
        client.post(f"{api}/propagation", json={"direction": "forward"})
        assert wait_for_job(client, session_id)["state"] == "done"
        # A correction on frame 6 after the propagation: a click added to the tracked mask.
        corrected = client.post(
            f"{api}/frames/6/prompts",
            json={"obj_id": 1, "points": [interior_point(labels[6] == 1)]},
        )
        assert corrected.status_code == 200, corrected.text
        boxed = client.post(
            f"{api}/frames/6/prompts", json={"obj_id": 2, "box": bounding_box(labels[6] == 2)}
        )
        assert boxed.status_code == 200, boxed.text
        before = {
            "session": client.get(api).json(),
            "prompts": client.get(f"{api}/prompts").json(),
            "masks": [client.get(f"{api}/frames/{i}/masks").json() for i in range(NUM_FRAMES)],
        }

    with TestClient(create_app(data, engine, allow_dirs=[folder])) as client:
        assert [s["id"] for s in client.get("/api/sessions").json()] == [session_id]
        after = client.get(api).json()
        for key in ("objects", "prompted_frames", "done_frames", "num_frames"):
            assert after[key] == before["session"][key]
        assert [o["name"] for o in after["objects"]] == ["star", "blob", "renamed"]
        assert client.get(f"{api}/prompts").json() == before["prompts"]
        for frame_index in range(NUM_FRAMES):
            assert (
                client.get(f"{api}/frames/{frame_index}/masks").json()
                == before["masks"][frame_index]
            )
        # The session goes on: a negative click refines the restored mask, then re-propagation.
        mask = object_mask(before["masks"][6], 1)
        ys, xs = np.nonzero(~mask & ~(labels[6] > 0))
        again = client.post(
            f"{api}/frames/6/prompts",
            json={"obj_id": 1, "points": [[int(xs[0]), int(ys[0])]], "labels": [0]},
        )
        assert again.status_code == 200, again.text
        assert client.get(f"{api}/prompts").json()[-1]["labels"] == [1, 0]
        client.post(f"{api}/propagation", json={"direction": "both"})
        assert wait_for_job(client, session_id)["state"] == "done"

        # Removing an object takes its prompts and masks with it, also after a restart.
        assert client.delete(f"{api}/objects/2").status_code == 204
    with TestClient(create_app(data, engine, allow_dirs=[folder])) as client:
        session = client.get(api).json()
        assert [o["id"] for o in session["objects"]] == [1, 3]
        assert {p["obj_id"] for p in client.get(f"{api}/prompts").json()} == {1}
        masks = client.get(f"{api}/frames/3/masks").json()
        assert [o["obj_id"] for o in masks["objects"]] == [1]


def test_correcting_one_of_two_objects_then_propagating_again(clip, engine, tmp_path):
    """The usual correction: a click on one object on a later frame, then propagate again."""
    folder, path, labels = clip
    with TestClient(create_app(tmp_path / "data", engine, allow_dirs=[folder])) as client:
        session_id = open_clip(client, path)
        api = f"/api/sessions/{session_id}"
        for obj_id in (1, 2):
            client.post(f"{api}/objects", json={})
            client.post(
                f"{api}/frames/0/prompts",
                json={"obj_id": obj_id, "box": bounding_box(labels[0] == obj_id)},
            )
        client.post(
            f"{api}/frames/6/prompts",
            json={"obj_id": 1, "points": [interior_point(labels[6] == 1)]},
        )
        client.post(f"{api}/propagation", json={"direction": "forward"})
        job = wait_for_job(client, session_id)
        if job["state"] == "failed" and job["error"].startswith("KeyError"):
            raise KeyError(job["error"])
        assert job["state"] == "done"


def test_idle_sessions_beyond_the_limit_close_and_reopen_intact(clip, engine, tmp_path):
    """Memory stays bounded with many sessions: past ``max_open_sessions``, the least recently
    used idle one is closed, and its next request reopens it from the database as it was."""
    folder, path, labels = clip
    app = create_app(tmp_path / "data", engine, allow_dirs=[folder], max_open_sessions=2)
    app.state.manager.idle_seconds = 0.0
    with TestClient(app) as client:
        first = open_clip(client, path)
        client.post(f"/api/sessions/{first}/objects", json={})
        prompt = {"obj_id": 1, "box": bounding_box(labels[2] == 1)}
        assert client.post(f"/api/sessions/{first}/frames/2/prompts", json=prompt).is_success
        before = client.get(f"/api/sessions/{first}/frames/2/masks").json()
        others = [open_clip(client, path) for _ in range(2)]
        assert app.state.manager.open_ids() == others  # the first one was closed
        after = client.get(f"/api/sessions/{first}/frames/2/masks").json()
        assert after == before and object_mask(after, 1).any()
        assert client.get(f"/api/sessions/{first}").json()["objects"][0]["id"] == 1
        assert app.state.manager.open_ids() == [others[1], first]


def test_more_than_three_objects_get_their_own_ids_and_colours(engine, tmp_path):
    video = render_synthetic_video(num_frames=24, width=WIDTH, height=HEIGHT, num_objects=4)
    path = write_mp4(tmp_path / "four.mp4", video.frames, video.fps)
    with TestClient(create_app(tmp_path / "data", engine, allow_dirs=[tmp_path])) as client:
        session_id = open_clip(client, path)
        api = f"/api/sessions/{session_id}"
        shown_on = {}
        for obj_id in video.object_ids:
            # Each object boxed on the frame where it shows most.
            frame = int(np.argmax([(labels == obj_id).sum() for labels in video.labels]))
            obj = client.post(f"{api}/objects", json={"name": f"thing {obj_id}"}).json()
            response = client.post(
                f"{api}/frames/{frame}/prompts",
                json={"obj_id": obj["id"], "box": bounding_box(video.labels[frame] == obj_id)},
            )
            assert response.status_code == 200, response.text
            shown_on[obj["id"]] = frame
        objects = client.get(api).json()["objects"]
        assert [o["id"] for o in objects] == [1, 2, 3, 4]
        assert len({o["color"] for o in objects}) == 4
        for obj_id, frame in shown_on.items():
            shown = client.get(f"{api}/frames/{frame}/masks").json()["objects"]
            assert {o["obj_id"]: o["area"] for o in shown}[obj_id] > 0


def test_cancel_busy_session_and_browsing_another_during_propagation(clip, engine, tmp_path):
    folder, path, labels = clip
    gated = GatedEngine(engine)
    with TestClient(create_app(tmp_path / "data", gated, allow_dirs=[folder])) as client:
        busy, other = open_clip(client, path), open_clip(client, path)
        for session_id in (busy, other):
            client.post(f"/api/sessions/{session_id}/objects", json={})
            client.post(
                f"/api/sessions/{session_id}/frames/0/prompts",
                json={"obj_id": 1, "points": [interior_point(labels[0] == 1)]},
            )
        client.post(f"/api/sessions/{busy}/propagation", json={"direction": "forward"})
        gated.gate.release(2)
        deadline = time.monotonic() + 60
        while client.get(f"/api/sessions/{busy}/propagation").json()["done"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # The job now waits inside the engine for frame 2; both sessions still answer.
        assert client.get(f"/api/sessions/{other}/frames/7.jpg").status_code == 200
        assert client.get(f"/api/sessions/{other}/frames/0/masks").status_code == 200
        assert client.get(f"/api/sessions/{busy}/frames/9.jpg").status_code == 200
        assert client.get(f"/api/sessions/{busy}/frames/1/masks").json()["objects"]
        refused = client.post(
            f"/api/sessions/{busy}/frames/3/prompts", json={"obj_id": 1, "points": [[5, 5]]}
        )
        assert refused.status_code == 409 and "propagation is running" in refused.json()["detail"]
        assert client.post(f"/api/sessions/{busy}/propagation", json={}).status_code == 409

        assert client.delete(f"/api/sessions/{busy}/propagation").status_code == 200
        gated.gate.release(NUM_FRAMES)
        job = wait_for_job(client, busy)
        assert (job["state"], job["done"], job["total"]) == ("cancelled", 3, NUM_FRAMES)
        assert client.get(f"/api/sessions/{busy}").json()["done_frames"] == [0, 1, 2]


def test_bad_requests_get_clear_errors(clip, engine, tmp_path):
    folder, path, _ = clip
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(path.read_bytes())
    with TestClient(create_app(tmp_path / "data", engine, allow_dirs=[folder])) as client:
        missing = client.get("/api/sessions/nope")
        assert (
            missing.status_code == 404 and "unknown session id 'nope'" in missing.json()["detail"]
        )
        for escape in (str(outside / "secret.mp4"), str(folder / ".." / "outside" / "secret.mp4")):
            refused = client.post("/api/sessions", json={"path": escape})
            assert refused.status_code == 403
            assert "outside the folders this server may read" in refused.json()["detail"]
        absent = client.post("/api/sessions", json={"path": str(folder / "absent.mp4")})
        assert absent.status_code == 404 and "does not exist" in absent.json()["detail"]

        session_id = open_clip(client, path)
        api = f"/api/sessions/{session_id}"
        unknown = client.post(f"{api}/frames/0/prompts", json={"obj_id": 9, "points": [[5, 5]]})
        assert unknown.status_code == 404 and "unknown object id 9" in unknown.json()["detail"]
        assert client.delete(f"{api}/objects/9").status_code == 404
        client.post(f"{api}/objects", json={})
        past = client.get(f"{api}/frames/{NUM_FRAMES}.jpg")
        assert past.status_code == 404 and "past the video" in past.json()["detail"]
        outside_frame = client.post(
            f"{api}/frames/0/prompts", json={"obj_id": 1, "points": [[500, 5]]}
        )
        assert outside_frame.status_code == 400 and "outside the 160x96 frame" in outside_frame.text
        nothing = client.post(f"{api}/propagation", json={})
        assert nothing.status_code == 400 and "no object is prompted yet" in nothing.text
        assert client.get(f"{api}/export/masks.zip").status_code == 400
        assert client.get(f"{api}/export/everything.tar").status_code == 404
        assert client.post(f"{api}/propagation", json={"direction": "sideways"}).status_code == 422


def test_uploads_are_type_checked_and_size_limited(clip, engine, tmp_path):
    _, path, _ = clip
    app = create_app(tmp_path / "data", engine, max_upload_mb=0.5)
    with TestClient(app) as client:
        video = path.read_bytes()
        uploaded = client.post("/api/sessions/upload", files={"file": ("my clip.mp4", video)})
        assert uploaded.status_code == 201, uploaded.text
        assert (
            uploaded.json()["num_frames"] == NUM_FRAMES and uploaded.json()["name"] == "my clip.mp4"
        )

        text = client.post("/api/sessions/upload", files={"file": ("notes.mp4", b"hello\n" * 500)})
        assert text.status_code == 400 and "not a video" in text.json()["detail"]
        still = io.BytesIO()
        Image.new("RGB", (32, 24), "red").save(still, format="PNG")
        image = client.post("/api/sessions/upload", files={"file": ("frame.png", still.getvalue())})
        assert image.status_code == 400 and "still image, not a video" in image.json()["detail"]
        big = client.post("/api/sessions/upload", files={"file": ("big.mp4", b"\0" * 2**20)})
        assert big.status_code == 413 and "larger than this server's limit" in big.text
        # Sent in chunks without a Content-Length, it is refused once the limit has come in.
        body = b"--b\r\nContent-Disposition: form-data; name=file; filename=big.mp4\r\n\r\n"
        body += b"\0" * 2**20 + b"\r\n--b--\r\n"
        chunked = client.post(
            "/api/sessions/upload",
            content=(body[i : i + 2**16] for i in range(0, len(body), 2**16)),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
        assert chunked.status_code == 413 and "larger than this server's limit" in chunked.text
        # Refused uploads leave nothing behind; the accepted one is kept for its session.
        assert [p.name for p in (tmp_path / "data" / "uploads").iterdir()] == ["my clip.mp4"]

        # Forgetting the session removes its upload too.
        session_id = uploaded.json()["id"]
        assert client.delete(f"/api/sessions/{session_id}").status_code == 204
        assert client.get(f"/api/sessions/{session_id}").status_code == 404
        assert list((tmp_path / "data" / "uploads").iterdir()) == []

        schema = client.get("/openapi.json").json()
        assert "/api/sessions/{session_id}/propagation/events" in schema["paths"]
        assert "/api/sessions/{session_id}/export/{kind}" in schema["paths"]
        # The API docs page works offline: its scripts come from this server, not a CDN.
        docs = client.get("/docs").text
        scripts = re.findall(r'src="([^"]+)"', docs) + re.findall(r'href="([^"]+\.css)"', docs)
        assert scripts and all(url.startswith("/") for url in scripts), scripts
        assert all(client.get(url).status_code == 200 for url in scripts)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_crash_mid_propagation_keeps_the_finished_frames(engine, tmp_path):
    """The server process is killed (SIGKILL) during a propagation; a new server finds every
    frame that had been reported finished."""
    import httpx

    video = render_synthetic_video(num_frames=48, width=WIDTH, height=HEIGHT, num_objects=2, seed=5)
    path = write_mp4(tmp_path / "long.mp4", video.frames, video.fps)
    data, port = tmp_path / "data", free_port()
    script = (
        "import sys, torch; torch.set_num_threads(1); from vidseg.web import run_server; "
        "run_server(sys.argv[1], port=int(sys.argv[2]), allow_dirs=[sys.argv[3]])"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", script, str(data), str(port), str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 90
            while True:
                assert server.poll() is None, server.stderr.read().decode()
                try:
                    client.get("/api/sessions")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the server did not start"
                    time.sleep(0.2)
            session_id = client.post("/api/sessions", json={"path": str(path)}).json()["id"]
            client.post(f"/api/sessions/{session_id}/objects", json={})
            client.post(
                f"/api/sessions/{session_id}/frames/0/prompts",
                json={"obj_id": 1, "points": [interior_point(video.labels[0] == 1)]},
            )
            client.post(f"/api/sessions/{session_id}/propagation", json={"direction": "forward"})
            while (job := client.get(f"/api/sessions/{session_id}/propagation").json())["done"] < 4:
                assert job["state"] == "running" and time.monotonic() < deadline
                time.sleep(0.05)
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
        server.stderr.close()
    assert job["done"] < len(video.frames), "the propagation ended before the crash"

    with TestClient(create_app(data, engine, allow_dirs=[tmp_path])) as client:
        session = client.get(f"/api/sessions/{session_id}").json()
        assert session["done_frames"][: job["done"]] == list(range(job["done"]))
        tracked = client.get(f"/api/sessions/{session_id}/frames/{job['done'] - 1}/masks").json()
        assert iou(object_mask(tracked, 1), video.labels[job["done"] - 1] == 1) > 0.3


def test_serve_refuses_a_missing_allowed_folder(tmp_path, capsys):
    from vidseg.cli.main import main

    assert main(["serve", "--allow-dir", str(tmp_path / "missing")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is not a folder" in error


DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016"


@pytest.mark.skipif(not DAVIS.exists(), reason="needs ../shared/data/davis2016")
def test_web_app_with_the_learned_prompt_decoder_on_real_frames(tmp_path):
    """The default engine's learned prompt decoder behind the web app: clicks and boxes sent
    through the API reach it and select the cow that was meant."""
    from vidseg.engines.builtin import BuiltinEngine
    from vidseg.evaluation import read_mask

    engine = BuiltinEngine()
    assert engine._prompt_decoder is None  # loaded on first use
    folder = tmp_path / "cows"
    folder.mkdir()
    for index in range(3):
        name = f"{index:05d}.jpg"
        (folder / name).write_bytes((DAVIS / "JPEGImages" / "480p" / "cows" / name).read_bytes())
    truth = read_mask(DAVIS / "Annotations" / "480p" / "cows" / "00000.png") > 0
    with TestClient(create_app(tmp_path / "data", engine, allow_dirs=[tmp_path])) as client:
        api = f"/api/sessions/{open_clip(client, folder)}"
        for obj_id, prompt in (
            (1, {"box": bounding_box(truth)}),
            (2, {"points": [interior_point(truth)]}),
        ):
            client.post(f"{api}/objects", json={"name": f"cow {obj_id}"})
            answer = client.post(f"{api}/frames/0/prompts", json={"obj_id": obj_id, **prompt})
            assert answer.status_code == 200, answer.text
            assert iou(object_mask(answer.json(), obj_id), truth) > {1: 0.85, 2: 0.7}[obj_id]
    assert engine._prompt_decoder is not None  # the prompts went through it
