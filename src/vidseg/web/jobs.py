"""Propagation jobs: a session's :meth:`~vidseg.session.TrackingSession.propagate` run in a
worker thread, with progress to follow and a cancel switch.

Each finished frame is handed to ``on_frame`` (the web app stores it) before the next one
starts, so a crash loses at most the frame being computed.

>>> import numpy as np
>>> from vidseg.demo.synthetic import render_synthetic_video
>>> from vidseg.session import TrackingSession
>>> video = render_synthetic_video(num_frames=4, width=96, height=64, seed=1)
>>> session = TrackingSession(video.frames)
>>> _ = session.add_mask(frame_index=0, obj_id=1, mask=video.labels[0] == 1)
>>> finished = []
>>> job = PropagationJob(session, direction="forward", on_frame=finished.append)
>>> job.start(); job.wait(timeout=60)
True
>>> job.snapshot()["state"], job.snapshot()["done"], [r.frame_index for r in finished]
('done', 4, [0, 1, 2, 3])
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from vidseg.errors import VidsegError
from vidseg.session import TrackingSession
from vidseg.session.results import FrameResult
from vidseg.session.session import Direction

_log = logging.getLogger(__name__)

JobState = Literal["running", "done", "cancelled", "failed"]

_job_ids = itertools.count(1)


class PropagationJob:
    """One propagation of one session, run by :meth:`start` in a daemon thread.

    ``total`` is known before it starts (from
    :meth:`~vidseg.session.TrackingSession.propagation_passes`), so the argument errors (no
    prompt yet, a start frame past the end) raise here, in the caller's thread.
    """

    def __init__(
        self,
        session: TrackingSession,
        *,
        direction: Direction = "both",
        start_frame: int | None = None,
        on_frame: Callable[[FrameResult], None] | None = None,
    ) -> None:
        passes = session.propagation_passes(start_frame, direction)
        self.id = next(_job_ids)
        self.session = session
        self.direction: Direction = direction
        self.start_frame = start_frame if start_frame is not None else passes[0].start
        self.total = sum(len(p) for p in passes)
        self.done = 0
        self.last_frame: int | None = None
        self.state: JobState = "running"
        self.error: str | None = None
        self.started = time.time()
        self.finished: float | None = None
        self._on_frame = on_frame
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"propagation-{self.id}")
        self._thread.daemon = True  # a server stopping mid-job keeps what is stored

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Ask the job to stop after the frame it is computing (it keeps the frames done)."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the job to end; whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self.state == "running"

    def snapshot(self) -> dict[str, Any]:
        """The job's progress, as the API reports it."""
        return {
            "id": self.id,
            "state": self.state,
            "direction": self.direction,
            "start_frame": self.start_frame,
            "done": self.done,
            "total": self.total,
            "last_frame": self.last_frame,
            "error": self.error,
            "seconds": round((self.finished or time.time()) - self.started, 3),
        }

    def _run(self) -> None:
        state: JobState = "done"
        try:
            results = self.session.propagate(self.start_frame, self.direction)
            try:
                for result in results:
                    if self._on_frame is not None:
                        self._on_frame(result)
                    self.done += 1
                    self.last_frame = result.frame_index
                    if self._cancel.is_set():
                        state = "cancelled"
                        break
            finally:
                results.close()
        except VidsegError as exc:
            state, self.error = "failed", str(exc)
        except Exception as exc:  # reported to the page; the server keeps running
            _log.exception("propagation job %s failed", self.id)
            state, self.error = "failed", f"{type(exc).__name__}: {exc}"
        self.finished = time.time()
        self.state = state
