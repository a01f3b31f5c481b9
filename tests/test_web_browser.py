"""The web app in a real browser: Debian's Chromium driven by Playwright against a uvicorn
server on a loopback port, on the first frames of a real DAVIS clip. The page is used as a
person would: open the clip, click the bear, see its mask, propagate, correct a frame, add a
second object with a box, export, then restart the server and find the session intact."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra is not installed: pip install '.[web]'")
pytest.importorskip("playwright", reason="playwright is not installed: pip install '.[dev]'")
import uvicorn  # noqa: E402
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from vidseg.engines.builtin import BuiltinEngine  # noqa: E402
from vidseg.web import create_app  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DAVIS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "davis2016"
SEQUENCE, NUM_FRAMES = "bear", 12

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's Chromium is not installed: apt-get install -y chromium (CI does)",
    ),
    pytest.mark.skipif(
        not (DAVIS / "videos" / f"{SEQUENCE}.mp4").exists(),
        reason="needs ../shared/data/davis2016/videos",
    ),
]


def truth(frame_index: int) -> np.ndarray:
    with Image.open(DAVIS / "Annotations" / "480p" / SEQUENCE / f"{frame_index:05d}.png") as image:
        labels = np.asarray(image)
    return (labels[..., 0] if labels.ndim == 3 else labels) > 0


def centre(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    return int(np.median(xs)), int(np.median(ys))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first frames of DAVIS 'bear' (854x480), cut from the shared mp4."""
    folder = tmp_path_factory.mktemp("videos")
    path = folder / f"{SEQUENCE}.mp4"
    with (
        av.open(str(DAVIS / "videos" / f"{SEQUENCE}.mp4")) as source,
        av.open(str(path), "w") as out,
    ):
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 854, 480, "yuv420p"
        stream.options = {"crf": "18"}
        for _, frame in zip(range(NUM_FRAMES), source.decode(video=0), strict=False):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"))))
        out.mux(stream.encode())
    return path


class Server:
    """The web app on a loopback port, in this process (the engine is loaded once and
    shared, as in ``vidseg serve``); :meth:`restart` stops it and serves a new app from the
    same data folder on the same port."""

    def __init__(self, data_dir: Path, allow_dir: Path) -> None:
        self.data_dir, self.allow_dir = data_dir, allow_dir
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._start()

    def _start(self) -> None:
        app = create_app(self.data_dir, BuiltinEngine.shared(), allow_dirs=[self.allow_dir])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "server did not stop"

    def restart(self) -> None:
        self.stop()
        self._start()


@pytest.fixture
def server(clip: Path, tmp_path: Path):
    running = Server(tmp_path / "data", clip.parent)
    yield running
    running.stop()


@pytest.fixture
def page(server: Server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        context = browser.new_context(
            viewport={"width": 1280, "height": 800}, accept_downloads=True
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield page
        browser.close()
    assert not errors, f"the page raised: {errors}"


def click_frame(page: Page, x: float, y: float, **options) -> None:
    """Click the frame at video pixel (x, y)."""
    box = page.locator("#view").bounding_box()
    assert box is not None
    scale = box["width"] / 854
    page.mouse.click(box["x"] + x * scale, box["y"] + y * scale, **options)


def drag_box(page: Page, x1: float, y1: float, x2: float, y2: float) -> None:
    box = page.locator("#view").bounding_box()
    assert box is not None
    scale = box["width"] / 854
    page.mouse.move(box["x"] + x1 * scale, box["y"] + y1 * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + (x1 + x2) / 2 * scale, box["y"] + (y1 + y2) / 2 * scale, steps=4)
    page.mouse.move(box["x"] + x2 * scale, box["y"] + y2 * scale, steps=4)
    page.mouse.up()


def wait_for_frame(page: Page, frame_index: int) -> int:
    """Wait until the page shows ``frame_index`` with its masks; the mask pixels shown."""
    page.wait_for_selector(f"#view[data-ready='1'][data-frame='{frame_index}']", timeout=30_000)
    return int(page.locator("#view").get_attribute("data-mask-pixels") or 0)


def wait_for_mask_change(page: Page, before: int) -> int:
    page.wait_for_function(
        f"document.getElementById('view').dataset.ready === '1' && "
        f"Number(document.getElementById('view').dataset.maskPixels) !== {before}",
        timeout=30_000,
    )
    return int(page.locator("#view").get_attribute("data-mask-pixels") or 0)


def propagate(page: Page) -> None:
    """Click Propagate and wait until the page reports that this new job is done."""
    before = page.evaluate("document.body.dataset.jobId || ''")
    page.click("#propagate")
    page.wait_for_function(
        f"document.body.dataset.job === 'done' && document.body.dataset.jobId !== '{before}'",
        timeout=60_000,
    )
    assert (
        page.locator("#progress-label")
        .text_content()
        .startswith(f"done: {NUM_FRAMES} / {NUM_FRAMES} frames")
    )


def shown_colour(page: Page, x: int, y: int) -> list[int]:
    """The RGB the canvas shows at video pixel (x, y)."""
    return page.evaluate(
        "([x, y]) => Array.from(document.getElementById('view').getContext('2d')"
        ".getImageData(x, y, 1, 1).data.slice(0, 3))",
        [x, y],
    )


def test_click_track_correct_export_and_restart_in_the_browser(
    server: Server, page: Page, clip: Path, tmp_path: Path
):
    page.goto(server.url)
    page.fill("#video-path", str(clip))
    page.click("#open-button")
    assert wait_for_frame(page, 0) == 0
    plain = shown_colour(page, *centre(truth(0)))

    # A click on the bear: its mask appears, tinted in the object's colour.
    click_frame(page, *centre(truth(0)))
    pixels = wait_for_mask_change(page, 0)
    assert 0.5 < pixels / truth(0).sum() < 1.5
    assert shown_colour(page, *centre(truth(0))) != plain
    expect(page.locator("#objects li")).to_have_count(1)
    page.locator("#objects li input.name").fill("bear")
    page.locator("#objects li input.name").press("Enter")

    propagate(page)
    for _ in range(8):
        page.keyboard.press("ArrowRight")
    tracked = wait_for_frame(page, 8)
    assert tracked > 0.5 * truth(8).sum()

    # A correction on frame 8: a negative click (right button) on the background, away from
    # the bear, then re-propagation.
    click_frame(page, 800, 40, button="right")
    wait_for_frame(page, 8)
    page.wait_for_function(
        "document.getElementById('view').dataset.ready === '1' && "
        "document.querySelector('#message').textContent === ''"
    )
    session_id = page.evaluate("location.hash").split("=")[1]
    prompts = page.request.get(f"{server.url}/api/sessions/{session_id}/prompts").json()
    assert [(p["frame_index"], p["labels"]) for p in prompts] == [(0, [1]), (8, [0])]
    propagate(page)

    # A second object, drawn as a box around a rock, on frame 8.
    page.click("#add-object")
    expect(page.locator("#objects li")).to_have_count(2)
    before = wait_for_frame(page, 8)
    drag_box(page, 560, 60, 840, 300)
    assert wait_for_mask_change(page, before) > before
    swatches = page.locator("#objects .swatch").evaluate_all(
        "nodes => nodes.map(n => n.style.background)"
    )
    assert len(set(swatches)) == 2

    # Exports download from the page.
    with page.expect_download() as download:
        page.click("#export-zip")
    archive = tmp_path / "masks.zip"
    download.value.save_as(archive)
    with zipfile.ZipFile(archive) as masks:
        assert len(masks.namelist()) == NUM_FRAMES
        with Image.open(io.BytesIO(masks.read(f"{SEQUENCE}/00008.png"))) as image:
            assert set(np.unique(np.asarray(image)).tolist()) == {0, 1, 2}
    with page.expect_download() as download:
        page.click("#export-coco")
    coco = json.loads(Path(download.value.path()).read_text())
    assert {a["object_id"] for a in coco["annotations"]} == {1, 2}

    # Keyboard: left arrow steps back; space plays to the end.
    page.keyboard.press("ArrowLeft")
    wait_for_frame(page, 7)
    page.keyboard.press(" ")
    wait_for_frame(page, NUM_FRAMES - 1)

    # The server restarts; reloading the page reopens the session as it was.
    shown = page.request.get(f"{server.url}/api/sessions/{session_id}").json()
    server.restart()
    page.reload()
    assert wait_for_frame(page, 0) == pixels
    expect(page.locator("#objects li input.name").first).to_have_value("bear")
    expect(page.locator("#objects li")).to_have_count(2)
    page.fill("#scrub", "8")
    assert wait_for_frame(page, 8) > tracked * 0.5
    restored = page.request.get(f"{server.url}/api/sessions/{session_id}").json()
    for key in ("objects", "prompted_frames", "done_frames"):
        assert restored[key] == shown[key]
    assert page.request.get(f"{server.url}/api/sessions/{session_id}/prompts").json()[:2] == prompts

    # The start page lists the session; it reopens from there, and can be forgotten.
    page.click("#home")
    page.click(f"#session-list li[data-id='{session_id}'] span")
    assert wait_for_frame(page, 0) == pixels
    page.click("#home")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"#session-list li[data-id='{session_id}'] .remove")
    page.wait_for_selector("#session-list li.muted")
    assert page.request.get(f"{server.url}/api/sessions").json() == []
