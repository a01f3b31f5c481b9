"""The web app's sessions: a :class:`~vidseg.session.TrackingSession` per opened video, with
named objects, frame images for the page, propagation jobs and exports, mirrored to the
:class:`~vidseg.web.store.SessionStore` as the user works.

One engine serves every session. Sessions are loaded from the store on first use after a
restart: their prompts come back with the masks they resolved to, and every finished frame's
masks come back as they were, without running the engine.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image

from vidseg.errors import OutputError, PromptError, VideoReadError, VidsegError
from vidseg.io import FrameSource, VideoFileSource, open_frames
from vidseg.outputs import (
    CocoRleWriter,
    OverlayVideoWriter,
    PaletteMaskWriter,
    decode_rle,
    encode_rle,
    object_color,
)
from vidseg.outputs._atomic import PendingFile
from vidseg.session import TrackingSession
from vidseg.session.prompts import ObjectPrompt
from vidseg.session.results import FrameResult
from vidseg.session.session import MAX_OBJECT_ID, Direction
from vidseg.web.jobs import PropagationJob
from vidseg.web.store import SessionStore

if TYPE_CHECKING:
    from vidseg.engines.base import Engine

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ogv")
EXPORT_KINDS = {"masks.zip": "application/zip", "coco.json": "application/json",
                "overlay.mp4": "video/mp4"}  # fmt: skip
JPEG_QUALITY = 88
JPEG_CACHE_FRAMES = 64  # per session: scrubbing back and forth re-encodes nothing
BROWSE_CACHE_FRAMES = 8  # decoded frames kept by the page's reader of a video file


class NotFoundError(VidsegError):
    """A session, object, frame or file that does not exist (HTTP 404)."""


class ForbiddenPathError(VidsegError):
    """A path outside the folders the server may read (HTTP 403)."""


class BusyError(VidsegError):
    """The session is propagating and cannot change its prompts now (HTTP 409)."""


class AllowedDirectories:
    """The folders whose videos the server may open; any other path is refused.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "a.mp4").write_bytes(b"")
    0
    >>> allowed = AllowedDirectories([root])
    >>> allowed.resolve(str(root / "a.mp4")) == (root / "a.mp4").resolve()
    True
    >>> allowed.resolve(str(root / ".." / "etc"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    vidseg.web.sessions.ForbiddenPathError: ... is outside the folders this server may read ...
    """

    def __init__(self, roots: Sequence[str | Path]) -> None:
        self.roots = [Path(r).expanduser().resolve() for r in roots]

    def resolve(self, path: str) -> Path:
        """The real path of ``path`` (symlinks followed; a relative path is taken from the
        first folder), if it lies in an allowed folder."""
        candidate = Path(path).expanduser()
        if not candidate.is_absolute() and self.roots:
            candidate = self.roots[0] / candidate
        resolved = candidate.resolve()
        if not any(resolved == root or root in resolved.parents for root in self.roots):
            raise ForbiddenPathError(
                f"'{path}' is outside the folders this server may read "
                f"({', '.join(map(str, self.roots))}): restart `vidseg serve` with "
                "--allow-dir naming its folder"
            )
        if not resolved.exists():
            raise NotFoundError(f"'{path}' does not exist")
        return resolved

    def videos(self, limit: int = 500) -> list[dict[str, str]]:
        """The video files and frame folders directly inside each allowed folder."""
        found = []
        for root in self.roots:
            if not root.is_dir():
                continue
            for entry in sorted(root.iterdir()):
                if entry.name.startswith("."):
                    continue
                if entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES:
                    found.append({"path": str(entry), "name": entry.name, "kind": "video"})
                elif entry.is_dir() and any(
                    p.suffix.lower() in (".jpg", ".jpeg", ".png") for p in entry.iterdir()
                ):
                    found.append({"path": str(entry), "name": entry.name, "kind": "frames"})
                if len(found) >= limit:
                    return found
        return found


def color_hex(obj_id: int) -> str:
    """An object's default colour: its DAVIS palette colour, as in the exported masks.

    >>> color_hex(1), color_hex(2)
    ('#800000', '#008000')
    """
    return "#{:02x}{:02x}{:02x}".format(*object_color(obj_id))


class WebSession:
    """One video opened in the web app, with its objects, prompts and finished frames."""

    def __init__(
        self,
        session_id: str,
        name: str,
        video_path: Path,
        engine: Engine,
        store: SessionStore,
    ) -> None:
        self.id = session_id
        self.name = name
        self.video_path = video_path
        self.store = store
        self.tracking = TrackingSession(open_frames(video_path), engine=engine)
        # A second reader for the page's frame images, so that browsing does not disturb the
        # propagation's sequential decoding. Its decoded-frame cache is kept small: the JPEGs
        # of the frames shown are cached instead, and every open session holds one.
        self._browse: FrameSource = (
            VideoFileSource(video_path, cache_frames=BROWSE_CACHE_FRAMES)
            if video_path.is_file()
            else open_frames(video_path)
        )
        self._browse_lock = threading.Lock()
        self._jpegs: OrderedDict[int, bytes] = OrderedDict()
        self.objects: dict[int, dict[str, Any]] = {}
        self._prompt_order: dict[tuple[int, int], int] = {}  # (frame, object) -> when given
        self._results: dict[int, tuple[dict[int, dict], dict[int, float]]] = {}
        self.job: PropagationJob | None = None
        # One prompt edit or job start at a time. Readers (frame and mask requests) take no
        # lock: they iterate over list(...) copies, made atomically under the GIL, since the
        # job thread adds finished frames while they read.
        self._lock = threading.RLock()

    # -- loading -------------------------------------------------------------------------------
    def restore(self) -> None:
        """Load the objects, prompts and finished frames saved in the store."""
        for row in self.store.objects(self.id):
            self.objects[row["obj_id"]] = {"name": row["name"], "color": row["color"]}
        for seq, row in enumerate(self.store.prompts(self.id)):
            prompt = ObjectPrompt(
                points=np.asarray(row["points"], dtype=np.float32).reshape(-1, 2),
                labels=np.asarray(row["labels"], dtype=np.int64).reshape(-1),
                box=None if row["box"] is None else np.asarray(row["box"], dtype=np.float32),
            )
            frame, obj = row["frame_index"], row["obj_id"]
            self.tracking.restore_prompt(frame, obj, prompt, decode_rle(row["mask_rle"]))
            self._prompt_order[(frame, obj)] = seq
        for frame, (rles, scores) in self.store.frame_masks(self.id).items():
            self.tracking.restore_result(frame, rles, scores)
            self._results[frame] = (rles, scores)

    def close(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.job.wait(timeout=30)
        self.tracking.frames.close()
        self._browse.close()

    # -- what the page shows -------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        info = self.tracking.info
        return {
            "id": self.id,
            "name": self.name,
            "video_path": str(self.video_path),
            "width": info.width,
            "height": info.height,
            "num_frames": info.num_frames,
            "fps": info.fps,
            "objects": self.list_objects(),
            "prompted_frames": sorted({frame for frame, _ in list(self._prompt_order)}),
            "done_frames": sorted(self._results),
            "job": None if self.job is None else self.job.snapshot(),
        }

    def list_frames(self) -> list[dict[str, Any]]:
        """Every frame: its index, name, and whether it has prompts and propagated masks."""
        info = self.tracking.info
        prompted = {frame for frame, _ in list(self._prompt_order)}
        done = set(list(self._results))
        names = info.frame_names or [f"{i:05d}" for i in range(info.num_frames)]
        return [
            {"index": i, "name": name, "prompted": i in prompted, "tracked": i in done}
            for i, name in enumerate(names)
        ]

    def frame_jpeg(self, frame_index: int) -> bytes:
        """Frame ``frame_index`` as a JPEG (cached)."""
        self._check_frame(frame_index)
        with self._browse_lock:
            cached = self._jpegs.get(frame_index)
            if cached is not None:
                self._jpegs.move_to_end(frame_index)
                return cached
            frame = self._browse[frame_index]
        ok, encoded = cv2.imencode(
            ".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
            raise VideoReadError(f"could not encode frame {frame_index} as JPEG")
        data = encoded.tobytes()
        with self._browse_lock:
            self._jpegs[frame_index] = data
            while len(self._jpegs) > JPEG_CACHE_FRAMES:
                self._jpegs.popitem(last=False)
        return data

    def frame_masks(self, frame_index: int) -> dict[int, np.ndarray]:
        """Every object's current mask on a frame: its prompt's there, else the last
        propagation's; objects without either are left out."""
        self._check_frame(frame_index)
        masks = {}
        for obj in list(self.objects):
            mask = self.tracking.mask(frame_index, obj)
            if mask is not None:
                masks[obj] = mask
        return masks

    def label_map(self, frame_index: int) -> np.ndarray:
        """(height, width) uint8, pixel value = object id: propagated masks, then the prompts
        in the order given (the later wins where they overlap)."""
        info = self.tracking.info
        labels = np.zeros((info.height, info.width), dtype=np.uint8)
        masks = self.frame_masks(frame_index)
        prompted = sorted(
            (obj for obj in masks if (frame_index, obj) in self._prompt_order),
            key=lambda obj: self._prompt_order[(frame_index, obj)],
        )
        for obj in [o for o in masks if o not in prompted] + prompted:
            labels[masks[obj]] = obj
        return labels

    def mask_png(self, frame_index: int) -> bytes:
        """The frame's label map as an indexed PNG: pixel value = object id, palette = the
        objects' colours, background transparent (the page lays it over the frame)."""
        labels = self.label_map(frame_index)
        palette = np.zeros((256, 3), dtype=np.uint8)
        for obj in range(1, MAX_OBJECT_ID + 1):
            palette[obj] = object_color(obj)
        for obj, meta in list(self.objects.items()):
            palette[obj] = [int(meta["color"][i : i + 2], 16) for i in (1, 3, 5)]
        image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
        image.putpalette(palette.tobytes())
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", transparency=0)
        return buffer.getvalue()

    def masks_rle(self, frame_index: int) -> dict[str, Any]:
        masks = self.frame_masks(frame_index)
        scores = self._results.get(frame_index, ({}, {}))[1]
        return {
            "frame_index": frame_index,
            "objects": [
                {
                    "obj_id": obj,
                    "source": "prompt" if (frame_index, obj) in self._prompt_order else "tracked",
                    "score": 1.0 if (frame_index, obj) in self._prompt_order else scores.get(obj),
                    "area": int(mask.sum()),
                    "rle": encode_rle(mask),
                }
                for obj, mask in sorted(masks.items())
            ],
        }

    # -- objects -------------------------------------------------------------------------------
    def list_objects(self) -> list[dict[str, Any]]:
        return [{"id": obj, **meta} for obj, meta in sorted(list(self.objects.items()))]

    def add_object(self, name: str | None = None) -> dict[str, Any]:
        with self._lock:
            obj = next((i for i in range(1, MAX_OBJECT_ID + 1) if i not in self.objects), None)
            if obj is None:
                raise PromptError(f"a session holds at most {MAX_OBJECT_ID} objects")
            self.objects[obj] = {"name": name or f"object {obj}", "color": color_hex(obj)}
            self.store.save_object(self.id, obj, **self.objects[obj])
            return {"id": obj, **self.objects[obj]}

    def rename_object(self, obj_id: int, name: str) -> dict[str, Any]:
        with self._lock:
            meta = self._object(obj_id)
            meta["name"] = name
            self.store.save_object(self.id, obj_id, **meta)
            return {"id": obj_id, **meta}

    def remove_object(self, obj_id: int) -> None:
        with self._lock:
            self._object(obj_id)
            self._check_idle()
            if obj_id in self.tracking.object_ids:
                self.tracking.remove_object(obj_id)
            for frame, (rles, scores) in self._results.items():
                if obj_id in rles:
                    # Also masks left from a propagation after the object's prompts went.
                    del rles[obj_id]
                    scores.pop(obj_id, None)
                    self.tracking.restore_result(frame, rles, scores)
            for key in [k for k in self._prompt_order if k[1] == obj_id]:
                del self._prompt_order[key]
            del self.objects[obj_id]
            self.store.delete_object(self.id, obj_id)

    # -- prompts -------------------------------------------------------------------------------
    def add_prompt(
        self,
        frame_index: int,
        obj_id: int,
        *,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        clear: bool = False,
    ) -> np.ndarray:
        """Clicks and/or a box for an object on a frame (clicks add to the earlier ones there
        unless ``clear``; a box replaces them). Returns the object's mask."""
        with self._lock:
            self._object(obj_id)
            self._check_frame(frame_index)
            self._check_idle()
            if box is None and not points:
                raise PromptError("a prompt needs points or a box: click on the object")
            mask = None
            if box is not None:
                mask = self.tracking.add_box(frame_index, obj_id, box)
            if points:
                mask = self.tracking.add_points(
                    frame_index, obj_id, points, labels, clear=clear and box is None
                )
            assert mask is not None
            prompt = self.tracking.prompt(frame_index, obj_id)
            assert prompt is not None
            self.store.save_prompt(
                self.id,
                frame_index,
                obj_id,
                {
                    "points": prompt.points.tolist(),
                    "labels": prompt.labels.tolist(),
                    "box": None if prompt.box is None else prompt.box.tolist(),
                },
                encode_rle(mask),
            )
            order = max(self._prompt_order.values(), default=0) + 1
            self._prompt_order[(frame_index, obj_id)] = order
            return mask

    def clear_prompts(self, frame_index: int, obj_id: int | None = None) -> None:
        """Remove the prompts on a frame: one object's, or all."""
        with self._lock:
            self._check_frame(frame_index)
            if obj_id is not None:
                self._object(obj_id)
            self._check_idle()
            if obj_id is None or (frame_index, obj_id) in self._prompt_order:
                self.tracking.clear_frame(frame_index, obj_id)
            for key in [k for k in self._prompt_order if k[0] == frame_index]:
                if obj_id is None or key[1] == obj_id:
                    del self._prompt_order[key]
            self.store.delete_prompts(self.id, frame_index, obj_id)

    def prompts(self) -> list[dict[str, Any]]:
        rows = []
        with self._lock:
            order = sorted(self._prompt_order, key=self._prompt_order.__getitem__)
        for frame, obj in order:
            prompt = self.tracking.prompt(frame, obj)
            assert prompt is not None
            rows.append(
                {
                    "frame_index": frame,
                    "obj_id": obj,
                    "points": prompt.points.tolist(),
                    "labels": prompt.labels.tolist(),
                    "box": None if prompt.box is None else prompt.box.tolist(),
                }
            )
        return rows

    # -- propagation ---------------------------------------------------------------------------
    def start_propagation(
        self, direction: Direction = "both", start_frame: int | None = None
    ) -> PropagationJob:
        with self._lock:
            self._check_idle()
            if start_frame is not None:
                self._check_frame(start_frame)
            job = PropagationJob(
                self.tracking, direction=direction, start_frame=start_frame, on_frame=self._finished
            )
            self.job = job
            job.start()
            return job

    def cancel_propagation(self) -> dict[str, Any] | None:
        """Ask the running propagation to stop after its current frame; returns at once (the
        job's progress events report when it has stopped)."""
        job = self.job
        if job is None:
            return None
        job.cancel()
        return job.snapshot()

    def _finished(self, result: FrameResult) -> None:
        """A frame the job has finished: stored before the job moves on."""
        rles = {obj: encode_rle(mask) for obj, mask in result.masks.items()}
        scores = {obj: float(result.scores.get(obj, 1.0)) for obj in rles}
        self.store.save_frame_masks(self.id, result.frame_index, rles, scores)
        self._results[result.frame_index] = (rles, scores)

    # -- exports -------------------------------------------------------------------------------
    def export(self, kind: str, folder: Path) -> Path:
        """Write an export of the current masks into ``folder``; its path.

        ``masks.zip``: one DAVIS palette PNG per frame with masks; ``coco.json``: COCO RLE;
        ``overlay.mp4``: the whole video with the masks drawn over it.
        """
        if kind not in EXPORT_KINDS:
            raise NotFoundError(f"unknown export '{kind}': choose one of {', '.join(EXPORT_KINDS)}")
        frames = sorted(set(self._results) | {frame for frame, _ in list(self._prompt_order)})
        if not frames:
            raise PromptError("nothing to export yet: click on an object first")
        info = self.tracking.info
        stem = Path(self.name).stem or "video"
        path = folder / f"{stem}-{kind}"
        if kind == "masks.zip":
            staging = folder / f".{stem}-masks"
            with PaletteMaskWriter(staging, info.frame_names) as writer:
                for frame in frames:
                    writer.write(frame, self.label_map(frame))
            pending = PendingFile(path)
            try:
                with zipfile.ZipFile(pending.temp_path, "w", zipfile.ZIP_DEFLATED) as archive:
                    for png in sorted(staging.iterdir()):
                        archive.write(png, f"{stem}/{png.name}")
                pending.commit()
            except BaseException:
                pending.discard()
                raise
        elif kind == "coco.json":
            with CocoRleWriter(path, info) as writer:
                for frame in frames:
                    labels = self.label_map(frame)
                    scores = self._results.get(frame, ({}, {}))[1]
                    writer.write(
                        frame, {obj: labels == obj for obj in list(self.objects)}, dict(scores)
                    )
        else:
            with OverlayVideoWriter(path, info.fps, info.width, info.height) as writer:
                for frame in range(info.num_frames):
                    with self._browse_lock:
                        image = self._browse[frame]
                    writer.write(image, self.label_map(frame))
        return path

    # -- checks --------------------------------------------------------------------------------
    def _object(self, obj_id: int) -> dict[str, Any]:
        if obj_id not in self.objects:
            raise NotFoundError(
                f"unknown object id {obj_id} in session {self.id}; its objects are "
                f"{sorted(self.objects) or 'none'}: add one with POST .../objects"
            )
        return self.objects[obj_id]

    def _check_frame(self, frame_index: int) -> None:
        count = self.tracking.num_frames
        if not 0 <= frame_index < count:
            raise NotFoundError(
                f"frame {frame_index} is past the video: it has {count} frames, numbered 0 to "
                f"{count - 1}"
            )

    def _check_idle(self) -> None:
        if self.job is not None and self.job.running:
            raise BusyError(
                "a propagation is running in this session: wait for it to finish or cancel it "
                "before changing prompts"
            )


class SessionManager:
    """Every web session of one server: created, opened from the store, and closed.

    At most ``max_open`` sessions stay open (each holds two video readers and cached frame
    images); beyond that, the least recently used ones that have been idle for
    ``idle_seconds`` and run no propagation are closed. Nothing is lost: everything of a
    session is in the store, and it reopens on its next request.
    """

    def __init__(
        self,
        store: SessionStore,
        engine: Engine,
        allowed: AllowedDirectories,
        uploads_dir: Path,
        exports_dir: Path,
        max_open: int = 8,
        idle_seconds: float = 60.0,
    ) -> None:
        self.store = store
        self.engine = engine
        self.allowed = allowed
        self.uploads_dir = uploads_dir.resolve()
        self.exports_dir = exports_dir
        self._open: dict[str, WebSession] = {}
        self._last_used: dict[str, float] = {}
        self.max_open = max_open
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def create(self, path: str, name: str | None = None) -> WebSession:
        """Open a video (a path inside the allowed folders) in a new session."""
        video_path = self.allowed.resolve(path)
        session_id = uuid.uuid4().hex[:12]
        session = WebSession(
            session_id, name or video_path.name, video_path, self.engine, self.store
        )
        self.store.create_session(session_id, name=session.name, video_path=str(video_path))
        with self._lock:
            self._open[session_id] = session
            self._last_used[session_id] = time.monotonic()
        self._close_idle()
        return session

    def get(self, session_id: str) -> WebSession:
        """An open session, loaded from the store on first use."""
        with self._lock:
            session = self._open.get(session_id)
            if session is not None:
                self._last_used[session_id] = time.monotonic()
                return session
            loading = self._loading.setdefault(session_id, threading.Lock())
        with loading:  # two requests for a stored session load it once
            with self._lock:
                if session_id in self._open:
                    return self._open[session_id]
            row = self.store.session(session_id)
            if row is None:
                raise NotFoundError(
                    f"unknown session id '{session_id}': list the sessions with GET /api/sessions"
                )
            try:
                session = WebSession(
                    session_id, row["name"], Path(row["video_path"]), self.engine, self.store
                )
            except VideoReadError as exc:
                raise NotFoundError(
                    f"the video of session '{session_id}' cannot be read any more: {exc}"
                ) from exc
            session.restore()
            with self._lock:
                self._open[session_id] = session
                self._last_used[session_id] = time.monotonic()
        self._close_idle()
        return session

    def open_ids(self) -> list[str]:
        """The sessions open now (the others are only in the store), least recently used first."""
        with self._lock:
            return sorted(self._open, key=lambda session_id: self._last_used[session_id])

    def _close_idle(self) -> None:
        """Close least recently used sessions while more than ``max_open`` are open; only ones
        idle for ``idle_seconds`` with no propagation running (a request may still hold a
        session it got a moment ago)."""
        now, closing = time.monotonic(), []
        with self._lock:
            for session_id in sorted(self._open, key=lambda key: self._last_used[key]):
                if len(self._open) <= self.max_open:
                    break
                session = self._open[session_id]
                busy = session.job is not None and session.job.running
                if busy or now - self._last_used[session_id] < self.idle_seconds:
                    continue
                closing.append(self._open.pop(session_id))
                del self._last_used[session_id]
        for session in closing:
            session.close()

    def list(self) -> list[dict[str, Any]]:
        rows = self.store.sessions()
        for row in rows:
            session = self._open.get(row["id"])
            row["job"] = None if session is None or session.job is None else session.job.snapshot()
        return rows

    def delete(self, session_id: str) -> None:
        if self.store.session(session_id) is None:
            raise NotFoundError(f"unknown session id '{session_id}'")
        with self._lock:
            session = self._open.pop(session_id, None)
            self._last_used.pop(session_id, None)
        if session is not None:
            session.close()
        row = self.store.session(session_id)
        self.store.delete_session(session_id)
        video = Path(row["video_path"]) if row else None
        if (
            video is not None
            and video.parent == self.uploads_dir
            and all(other["video_path"] != str(video) for other in self.store.sessions())
        ):
            video.unlink(missing_ok=True)  # an upload goes with the last session using it

    def export(self, session_id: str, kind: str) -> Path:
        session = self.get(session_id)
        folder = self.exports_dir / session_id
        try:
            return session.export(kind, folder)
        except OSError as exc:
            raise OutputError(f"cannot write the export into {folder}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            sessions, self._open = list(self._open.values()), {}
            self._last_used = {}
        for session in sessions:
            session.close()
