"""SQLite persistence of web sessions: the video, the objects, every prompt and every finished
frame's masks (COCO RLE), written as the user works so that a restart or a crash loses none.

Each write is its own transaction, committed before the call returns; the database runs in
WAL mode so that readers never wait for the propagation thread's writes.

>>> import tempfile
>>> store = SessionStore(tempfile.mkdtemp() + "/sessions.db")
>>> store.create_session("s1", name="clip", video_path="/videos/clip.mp4")
>>> store.save_object("s1", 1, name="dog", color="#800000")
>>> store.save_prompt("s1", 0, 1, {"points": [[5, 6]], "labels": [1], "box": None},
...                   {"size": [2, 2], "counts": "13"})
>>> store.save_frame_masks("s1", 3, {1: {"size": [2, 2], "counts": "13"}}, {1: 0.9})
>>> [p["points"] for p in store.prompts("s1")], sorted(store.frame_masks("s1"))
([[[5, 6]]], [3])
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    video_path TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    obj_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    color TEXT NOT NULL,
    PRIMARY KEY (session_id, obj_id)
);
-- The current prompt of an object on a frame, and the mask it resolved to; seq orders them
-- as given (where prompt masks overlap, the later one wins).
CREATE TABLE IF NOT EXISTS prompts (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    frame_index INTEGER NOT NULL,
    obj_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    mask_rle TEXT NOT NULL,
    PRIMARY KEY (session_id, frame_index, obj_id)
);
-- Propagated masks: one row per object and finished frame.
CREATE TABLE IF NOT EXISTS masks (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    frame_index INTEGER NOT NULL,
    obj_id INTEGER NOT NULL,
    rle TEXT NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (session_id, frame_index, obj_id)
);
"""


class SessionStore:
    """The web app's SQLite database (one file; safe to share between threads)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed write survives a crash of the process (not of the OS).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for sql, params in statements:
                    self._db.execute(sql, params)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @staticmethod
    def _touch(session_id: str) -> tuple[str, tuple]:
        return "UPDATE sessions SET updated = ? WHERE id = ?", (time.time(), session_id)

    # -- sessions ------------------------------------------------------------------------------
    def create_session(self, session_id: str, *, name: str, video_path: str) -> None:
        now = time.time()
        self._write(
            [
                (
                    "INSERT INTO sessions (id, name, video_path, created, updated) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (session_id, name, video_path, now, now),
                )
            ]
        )

    def session(self, session_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return dict(rows[0]) if rows else None

    def sessions(self) -> list[dict[str, Any]]:
        """Every session, most recently changed first."""
        return [dict(r) for r in self._read("SELECT * FROM sessions ORDER BY updated DESC")]

    def delete_session(self, session_id: str) -> None:
        self._write([("DELETE FROM sessions WHERE id = ?", (session_id,))])

    # -- objects -------------------------------------------------------------------------------
    def save_object(self, session_id: str, obj_id: int, *, name: str, color: str) -> None:
        self._write(
            [
                (
                    "INSERT INTO objects (session_id, obj_id, name, color) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (session_id, obj_id) DO UPDATE SET name = excluded.name, "
                    "color = excluded.color",
                    (session_id, obj_id, name, color),
                ),
                self._touch(session_id),
            ]
        )

    def objects(self, session_id: str) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT obj_id, name, color FROM objects WHERE session_id = ? ORDER BY obj_id",
            (session_id,),
        )
        return [dict(r) for r in rows]

    def delete_object(self, session_id: str, obj_id: int) -> None:
        """Forget an object with its prompts and masks."""
        self._write(
            [
                (f"DELETE FROM {table} WHERE session_id = ? AND obj_id = ?", (session_id, obj_id))
                for table in ("objects", "prompts", "masks")
            ]
            + [self._touch(session_id)]
        )

    # -- prompts -------------------------------------------------------------------------------
    def save_prompt(
        self,
        session_id: str,
        frame_index: int,
        obj_id: int,
        prompt: Mapping[str, Any],
        mask_rle: Mapping[str, Any],
    ) -> None:
        """Store an object's prompt on a frame (replacing the one before) with its mask."""
        self._write(
            [
                (
                    "INSERT OR REPLACE INTO prompts "
                    "(session_id, frame_index, obj_id, seq, prompt, mask_rle) VALUES (?, ?, ?, "
                    "(SELECT COALESCE(MAX(seq), 0) + 1 FROM prompts WHERE session_id = ?), ?, ?)",
                    (
                        session_id,
                        frame_index,
                        obj_id,
                        session_id,
                        json.dumps(prompt),
                        json.dumps(mask_rle),
                    ),
                ),
                self._touch(session_id),
            ]
        )

    def delete_prompts(self, session_id: str, frame_index: int, obj_id: int | None) -> None:
        """Remove the prompts on a frame: one object's, or every object's."""
        if obj_id is None:
            sql = "DELETE FROM prompts WHERE session_id = ? AND frame_index = ?"
            params: tuple = (session_id, frame_index)
        else:
            sql = "DELETE FROM prompts WHERE session_id = ? AND frame_index = ? AND obj_id = ?"
            params = (session_id, frame_index, obj_id)
        self._write([(sql, params), self._touch(session_id)])

    def prompts(self, session_id: str) -> list[dict[str, Any]]:
        """Every prompt of the session in the order given: ``frame_index``, ``obj_id``,
        ``points``, ``labels``, ``box`` and ``mask_rle``."""
        rows = self._read(
            "SELECT frame_index, obj_id, prompt, mask_rle FROM prompts WHERE session_id = ? "
            "ORDER BY seq",
            (session_id,),
        )
        return [
            {
                "frame_index": r["frame_index"],
                "obj_id": r["obj_id"],
                **json.loads(r["prompt"]),
                "mask_rle": json.loads(r["mask_rle"]),
            }
            for r in rows
        ]

    # -- propagated masks ----------------------------------------------------------------------
    def save_frame_masks(
        self,
        session_id: str,
        frame_index: int,
        rles: Mapping[int, Mapping[str, Any]],
        scores: Mapping[int, float],
    ) -> None:
        """Store one finished frame's masks (replacing the frame's earlier ones)."""
        statements = [
            (
                "DELETE FROM masks WHERE session_id = ? AND frame_index = ?",
                (session_id, frame_index),
            )
        ]
        statements += [
            (
                "INSERT INTO masks (session_id, frame_index, obj_id, rle, score) "
                "VALUES (?, ?, ?, ?, ?)",
                (session_id, frame_index, obj, json.dumps(rle), float(scores.get(obj, 1.0))),
            )
            for obj, rle in rles.items()
        ]
        self._write(statements + [self._touch(session_id)])

    def frame_masks(
        self, session_id: str
    ) -> dict[int, tuple[dict[int, dict[str, Any]], dict[int, float]]]:
        """Every finished frame: ``{frame_index: ({obj_id: rle}, {obj_id: score})}``."""
        rows = self._read(
            "SELECT frame_index, obj_id, rle, score FROM masks WHERE session_id = ?",
            (session_id,),
        )
        frames: dict[int, tuple[dict[int, dict[str, Any]], dict[int, float]]] = {}
        for r in rows:
            rles, scores = frames.setdefault(r["frame_index"], ({}, {}))
            rles[r["obj_id"]] = json.loads(r["rle"])
            scores[r["obj_id"]] = r["score"]
        return frames
