"""The engine protocol: what a segmentation model must provide to run behind a session.

A session owns the video, the prompts and the results; an engine owns the model. The engine
turns a prompt into a mask on one frame, and gives a :class:`Tracker` that holds one
propagation pass's memory. Later engines (SAM 2 through transformers, ...) implement the same
two small protocols.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vidseg.io import VideoInfo
from vidseg.session.prompts import ObjectPrompt


@dataclass
class ObjectPrediction:
    """An engine's estimate for one object on one frame.

    ``probability`` is a float32 (height, width) map in [0, 1] at full frame resolution;
    ``presence`` is the probability that the object is visible at all on this frame.
    """

    probability: np.ndarray
    presence: float


class Tracker(Protocol):
    """The state of one propagation pass over a video (its memory bank)."""

    def remember(
        self,
        frame_index: int,
        frame: np.ndarray,
        masks: Mapping[int, np.ndarray],
        *,
        prompted: bool,
    ) -> None:
        """Store a frame with its final masks (boolean, full resolution) in memory.

        Prompted frames are kept for the whole pass; others enter a bounded FIFO of recent
        frames. ``masks`` may hold a subset of the objects: the ones known on that frame.
        """

    def predict(self, frame_index: int, frame: np.ndarray) -> dict[int, ObjectPrediction]:
        """Predict every remembered object on a new frame, from memory."""


class Engine(Protocol):
    """A segmentation model that a :class:`~vidseg.session.TrackingSession` drives."""

    name: str

    def mask_from_prompt(
        self, frame: np.ndarray, prompt: ObjectPrompt, previous: np.ndarray | None = None
    ) -> np.ndarray:
        """Turn clicks or a box on a frame into a boolean mask.

        ``previous`` is the object's current mask on that frame, if any, so that a correction
        click refines it instead of starting over.
        """

    def new_tracker(self, info: VideoInfo, *, reverse: bool = False) -> Tracker:
        """Start a propagation pass with an empty memory; ``reverse``: the pass goes from later
        to earlier frames (some models read their memory differently then)."""
