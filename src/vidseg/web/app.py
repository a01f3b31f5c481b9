"""The web app's HTTP side: a JSON API (documented at ``/docs``, schema at ``/openapi.json``)
and the page that drives it, served by one FastAPI app.

Request handlers that touch frames or the engine are plain functions, which FastAPI runs in
its thread pool, so browsing one session stays responsive while another propagates (the
propagation itself runs in its own thread; torch and OpenCV release the GIL while they work).

>>> import tempfile
>>> from fastapi.testclient import TestClient
>>> app = create_app(tempfile.mkdtemp(), engine=object())  # no model needed to list sessions
>>> TestClient(app).get("/api/sessions").json()
[]
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import av
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vidseg import __version__
from vidseg.errors import VideoReadError, VidsegError
from vidseg.io import open_frames
from vidseg.web.sessions import (
    EXPORT_KINDS,
    AllowedDirectories,
    BusyError,
    ForbiddenPathError,
    NotFoundError,
    SessionManager,
)
from vidseg.web.store import SessionStore

if TYPE_CHECKING:
    from vidseg.engines.base import Engine

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_UPLOAD_MB = 500
_UPLOAD_CHUNK = 1 << 20
_MULTIPART_ENVELOPE = 64 << 10  # boundaries and part headers around the file


class OpenVideo(BaseModel):
    path: str = Field(description="a video file or frame folder inside an allowed folder")
    name: str | None = Field(None, description="the session's name (default: the file name)")


class NewObject(BaseModel):
    name: str | None = Field(None, max_length=200)


class RenameObject(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class PromptIn(BaseModel):
    obj_id: int
    points: list[tuple[float, float]] = Field(
        default_factory=list, description="(x, y) pixel clicks"
    )
    labels: list[int] | None = Field(None, description="1 = object (default), 0 = background")
    box: tuple[float, float, float, float] | None = Field(None, description="x1, y1, x2, y2")
    clear: bool = Field(False, description="start over instead of adding to earlier clicks")


class PropagateIn(BaseModel):
    direction: Literal["forward", "backward", "both"] = "both"
    start_frame: int | None = None


def create_app(
    data_dir: str | Path,
    engine: Engine | None = None,
    *,
    allow_dirs: Sequence[str | Path] = (),
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_open_sessions: int = 8,
) -> FastAPI:
    """The web app, keeping its database, uploads and exports under ``data_dir``.

    ``engine`` defaults to the shared built-in engine (loaded once per process). Videos may be
    opened from ``data_dir/uploads`` and from ``allow_dirs``, nowhere else. At most
    ``max_open_sessions`` sessions are held open in memory; idle ones beyond that are closed
    and reopen from the database on their next request.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    uploads = data_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    if engine is None:
        from vidseg.engines.builtin import BuiltinEngine

        engine = BuiltinEngine.shared()
    store = SessionStore(data_dir / "sessions.db")
    manager = SessionManager(
        store,
        engine,
        AllowedDirectories([*allow_dirs, uploads]),
        uploads_dir=uploads,
        exports_dir=data_dir / "exports",
        max_open=max_open_sessions,
    )
    max_upload_bytes = int(max_upload_mb * 2**20)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        manager.close()  # running jobs stop after their current frame; finished ones are stored
        store.close()

    # FastAPIOffline serves the /docs page's scripts itself: the stock one loads them from a
    # CDN, which a machine without internet cannot reach.
    app = FastAPIOffline(
        title="vidseg",
        version=__version__,
        description="Click objects in a video, track them, correct and export the masks.",
        lifespan=lifespan,
    )
    app.state.manager = manager
    app.add_middleware(UploadSizeLimit, path="/api/sessions/upload", limit=max_upload_bytes)

    @app.exception_handler(VidsegError)
    async def input_error(_: Request, exc: VidsegError) -> JSONResponse:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=status)

    # -- page ----------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # -- sessions ------------------------------------------------------------------------------
    @app.get("/api/videos", summary="Videos and frame folders the server may open")
    def list_videos() -> list[dict[str, str]]:
        return manager.allowed.videos()

    @app.get("/api/sessions", summary="Every session, most recent first")
    def list_sessions() -> list[dict[str, Any]]:
        return manager.list()

    @app.post("/api/sessions", status_code=201, summary="Open a video from a path")
    def open_video(body: OpenVideo) -> dict[str, Any]:
        return manager.create(body.path, body.name).describe()

    @app.post("/api/sessions/upload", status_code=201, summary="Open an uploaded video")
    def upload_video(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        # The size was checked while the body came in (UploadSizeLimit, below).
        name = _safe_file_name(file.filename)
        target = _unique_path(uploads, name)
        try:
            with open(target, "xb") as out:
                shutil.copyfileobj(file.file, out, _UPLOAD_CHUNK)
            _check_is_video(target, name)
            return manager.create(str(target), name).describe()
        except BaseException:
            target.unlink(missing_ok=True)
            raise

    @app.get("/api/sessions/{session_id}", summary="A session: video, objects, progress")
    def get_session(session_id: str) -> dict[str, Any]:
        return manager.get(session_id).describe()

    @app.delete("/api/sessions/{session_id}", status_code=204, summary="Forget a session")
    def delete_session(session_id: str) -> Response:
        manager.delete(session_id)
        return Response(status_code=204)

    # -- frames and masks ----------------------------------------------------------------------
    @app.get("/api/sessions/{session_id}/frames", summary="Every frame, with what it holds")
    def list_frames(session_id: str) -> list[dict[str, Any]]:
        return manager.get(session_id).list_frames()

    @app.get(
        "/api/sessions/{session_id}/frames/{frame_index}.jpg",
        summary="A frame as JPEG",
        response_class=Response,
    )
    def frame_image(session_id: str, frame_index: int) -> Response:
        data = manager.get(session_id).frame_jpeg(frame_index)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get(
        "/api/sessions/{session_id}/frames/{frame_index}/masks",
        summary="Every object's mask on a frame, as COCO RLE (format=rle) or an indexed PNG "
        "(format=png: pixel value = object id, background transparent)",
    )
    def frame_masks(
        session_id: str, frame_index: int, format: Literal["rle", "png"] = "rle"
    ) -> Any:
        session = manager.get(session_id)
        if format == "png":
            return Response(
                session.mask_png(frame_index),
                media_type="image/png",
                headers={"Cache-Control": "no-store"},
            )
        return session.masks_rle(frame_index)

    # -- objects -------------------------------------------------------------------------------
    @app.post("/api/sessions/{session_id}/objects", status_code=201, summary="Add an object")
    def add_object(session_id: str, body: NewObject) -> dict[str, Any]:
        return manager.get(session_id).add_object(body.name)

    @app.patch("/api/sessions/{session_id}/objects/{obj_id}", summary="Rename an object")
    def rename_object(session_id: str, obj_id: int, body: RenameObject) -> dict[str, Any]:
        return manager.get(session_id).rename_object(obj_id, body.name)

    @app.delete(
        "/api/sessions/{session_id}/objects/{obj_id}",
        status_code=204,
        summary="Remove an object with its prompts and masks",
    )
    def remove_object(session_id: str, obj_id: int) -> Response:
        manager.get(session_id).remove_object(obj_id)
        return Response(status_code=204)

    # -- prompts -------------------------------------------------------------------------------
    @app.get("/api/sessions/{session_id}/prompts", summary="Every prompt, in the order given")
    def list_prompts(session_id: str) -> list[dict[str, Any]]:
        return manager.get(session_id).prompts()

    @app.post(
        "/api/sessions/{session_id}/frames/{frame_index}/prompts",
        summary="Click (points with labels) or draw a box for an object on a frame; returns "
        "the frame's masks",
    )
    def add_prompt(session_id: str, frame_index: int, body: PromptIn) -> dict[str, Any]:
        session = manager.get(session_id)
        session.add_prompt(
            frame_index,
            body.obj_id,
            points=[list(p) for p in body.points],
            labels=body.labels,
            box=None if body.box is None else list(body.box),
            clear=body.clear,
        )
        return session.masks_rle(frame_index)

    @app.delete(
        "/api/sessions/{session_id}/frames/{frame_index}/prompts",
        status_code=204,
        summary="Remove the prompts on a frame (of one object with obj_id, else of all)",
    )
    def clear_prompts(
        session_id: str, frame_index: int, obj_id: Annotated[int | None, Query()] = None
    ) -> Response:
        manager.get(session_id).clear_prompts(frame_index, obj_id)
        return Response(status_code=204)

    # -- propagation ---------------------------------------------------------------------------
    @app.post(
        "/api/sessions/{session_id}/propagation",
        status_code=202,
        summary="Start tracking the prompted objects through the video",
    )
    def start_propagation(session_id: str, body: PropagateIn) -> dict[str, Any]:
        job = manager.get(session_id).start_propagation(body.direction, body.start_frame)
        return job.snapshot()

    @app.get("/api/sessions/{session_id}/propagation", summary="The last propagation's progress")
    def propagation_status(session_id: str) -> dict[str, Any] | None:
        job = manager.get(session_id).job
        return None if job is None else job.snapshot()

    @app.delete("/api/sessions/{session_id}/propagation", summary="Cancel the propagation")
    def cancel_propagation(session_id: str) -> dict[str, Any] | None:
        return manager.get(session_id).cancel_propagation()

    @app.get(
        "/api/sessions/{session_id}/propagation/events",
        summary="Server-sent events: the propagation's progress until it ends",
        response_class=StreamingResponse,
    )
    async def propagation_events(session_id: str, request: Request) -> StreamingResponse:
        session = await asyncio.to_thread(manager.get, session_id)

        async def events() -> AsyncIterator[str]:
            last = None
            while True:
                job = session.job
                snapshot = None if job is None else job.snapshot()
                current = None if snapshot is None else (snapshot["state"], snapshot["done"])
                if current != last:
                    last = current
                    yield f"event: progress\ndata: {json.dumps(snapshot)}\n\n"
                if snapshot is None or snapshot["state"] != "running":
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.2)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    # -- exports -------------------------------------------------------------------------------
    @app.get(
        "/api/sessions/{session_id}/export/{kind}",
        summary="Download the masks: masks.zip (palette PNGs), coco.json or overlay.mp4",
        response_class=FileResponse,
    )
    def export(session_id: str, kind: str) -> FileResponse:
        path = manager.export(session_id, kind)
        return FileResponse(path, media_type=EXPORT_KINDS[kind], filename=path.name)

    return app


class UploadSizeLimit:
    """ASGI middleware refusing (413) a request body to ``path`` larger than ``limit`` bytes:
    at once when its Content-Length says so, else as soon as that much has come in. Multipart
    bodies are read and spooled before the handler runs, so the handler cannot do this."""

    def __init__(self, app: ASGIApp, path: str, limit: int) -> None:
        self.app, self.path = app, path
        self.limit = limit + _MULTIPART_ENVELOPE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        message = (
            f"the upload is larger than this server's limit of "
            f"{(self.limit - _MULTIPART_ENVELOPE) / 2**20:g} MB: restart `vidseg serve` with a "
            "larger --max-upload-mb, or open the file by its path"
        )
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > self.limit:
                raise HTTPException(status_code=413, detail=message)
            return event

        await self.app(scope, counted, send)


def _safe_file_name(name: str | None) -> str:
    """An uploaded file's name, safe to use inside the uploads folder.

    >>> _safe_file_name("../../etc/passwd"), _safe_file_name("..."), _safe_file_name("my clip.mp4")
    ('passwd', 'upload', 'my clip.mp4')
    """
    cleaned = re.sub(r"[^\w.\- ]", "_", Path(name or "").name).lstrip(". ")
    return cleaned or "upload"


_STATUS: dict[type[VidsegError], int] = {
    NotFoundError: 404,
    ForbiddenPathError: 403,
    BusyError: 409,
}


def _unique_path(folder: Path, name: str) -> Path:
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, n = folder / name, 1
    while candidate.exists():
        candidate, n = folder / f"{stem}-{n}{suffix}", n + 1
    return candidate


_IMAGE_DEMUXERS = ("image2", "_pipe")


def _check_is_video(path: Path, name: str) -> None:
    """Refuse an upload that FFmpeg cannot read as a video (a still image is not one)."""
    try:
        with av.open(str(path)) as container:
            demuxer = container.format.name
    except av.FFmpegError as exc:
        raise VideoReadError(
            f"'{name}' is not a video FFmpeg can read ({exc}): upload a video file (mp4, mov, "
            "mkv, webm, avi)"
        ) from exc
    if demuxer == _IMAGE_DEMUXERS[0] or demuxer.endswith(_IMAGE_DEMUXERS[1]):
        raise VideoReadError(
            f"'{name}' is a still image, not a video: upload a video file (mp4, mov, mkv, "
            "webm, avi)"
        )
    open_frames(path).close()  # decodes the stream's index: catches empty or broken videos


def run_server(
    data_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_dirs: Sequence[str | Path] = (),
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_open_sessions: int = 8,
    engine: Engine | None = None,
) -> None:
    """Serve the web app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(
        data_dir,
        engine,
        allow_dirs=allow_dirs,
        max_upload_mb=max_upload_mb,
        max_open_sessions=max_open_sessions,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


__all__ = ["create_app", "run_server"]
