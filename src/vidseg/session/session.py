"""The tracking session: one video, the user's prompts, and the masks propagated from them.

Modelled on SAM 2's video predictor, which holds per-video state: prompts go to any frame for
any object, and :meth:`TrackingSession.propagate` yields every object's mask frame by frame.
The session is engine-agnostic; the engine only turns prompts into masks and runs the memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from vidseg.errors import FrameIndexError, PromptError, UnknownObjectError
from vidseg.io import FrameSource, VideoInfo, open_frames
from vidseg.outputs.coco_rle import decode_rle, encode_rle
from vidseg.session.prompts import ObjectPrompt
from vidseg.session.results import FrameResult

if TYPE_CHECKING:  # engines import the prompt types from this package
    from vidseg.engines.base import Engine, ObjectPrediction, Tracker

Direction = Literal["forward", "backward", "both"]
MAX_OBJECT_ID = 255  # masks are written as 8-bit palette PNGs, where pixel value = object id


class TrackingSession:
    """Prompt objects on any frame of a video and propagate their masks through it.

    >>> import numpy as np
    >>> from vidseg.demo.synthetic import render_synthetic_video
    >>> from vidseg.session import TrackingSession
    >>> video = render_synthetic_video(num_frames=8, width=160, height=96, seed=1)
    >>> session = TrackingSession(video.frames)
    >>> first_mask = session.add_mask(frame_index=0, obj_id=1, mask=video.labels[0] == 1)
    >>> results = list(session.propagate(direction="forward"))
    >>> [r.frame_index for r in results]
    [0, 1, 2, 3, 4, 5, 6, 7]
    >>> results[-1].masks[1].shape
    (96, 160)
    """

    def __init__(
        self, video: str | Path | np.ndarray | FrameSource, engine: Engine | None = None
    ) -> None:
        self.frames: FrameSource = open_frames(video)
        if engine is None:
            from vidseg.engines.builtin import BuiltinEngine

            engine = BuiltinEngine.shared()
        self.engine = engine
        self._prompts: dict[int, dict[int, ObjectPrompt]] = {}  # frame -> object -> prompt
        self._prompt_masks: dict[int, dict[int, np.ndarray]] = {}  # what each prompt resolved to
        self._results: dict[int, dict[int, dict]] = {}  # frame -> object -> RLE of the last mask
        self._scores: dict[int, dict[int, float]] = {}
        #: Seconds the engine's trackers spent per stage (encoder, read-out, ...), summed over
        #: every propagation so far, for engines whose trackers report ``stage_seconds``.
        self.engine_stage_seconds: dict[str, float] = {}

    # -- what the session holds -----------------------------------------------------------------
    @property
    def info(self) -> VideoInfo:
        return self.frames.info

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def object_ids(self) -> list[int]:
        """Ids of the objects that have at least one prompt."""
        return sorted({obj for prompts in self._prompts.values() for obj in prompts})

    @property
    def prompted_frames(self) -> list[int]:
        return sorted(self._prompts)

    def prompt(self, frame_index: int, obj_id: int) -> ObjectPrompt | None:
        """The prompt given for an object on a frame, if any."""
        return self._prompts.get(frame_index, {}).get(obj_id)

    def mask(self, frame_index: int, obj_id: int) -> np.ndarray | None:
        """The object's current mask on a frame: from its prompt there, else from the last
        propagation that reached the frame; ``None`` if neither exists."""
        self._check_frame(frame_index)
        if obj_id in self._prompt_masks.get(frame_index, {}):
            return self._prompt_masks[frame_index][obj_id]
        rle = self._results.get(frame_index, {}).get(obj_id)
        return None if rle is None else decode_rle(rle)

    # -- prompts ------------------------------------------------------------------------------
    def add_points(
        self,
        frame_index: int,
        obj_id: int,
        points: Sequence[Sequence[float]] | np.ndarray,
        labels: Sequence[int] | np.ndarray | None = None,
        *,
        clear: bool = False,
    ) -> np.ndarray:
        """Click on an object: ``points`` are (x, y) pixels, ``labels`` 1 = object (default),
        0 = not the object. Clicks add to the earlier clicks on this frame unless ``clear``.

        Returns the object's mask on that frame.
        """
        points_array = self._check_points(points)
        labels_array = (
            np.ones(len(points_array), dtype=np.int64)
            if labels is None
            else np.asarray(labels, dtype=np.int64).reshape(-1)
        )
        if len(labels_array) != len(points_array):
            raise PromptError(
                f"{len(points_array)} point(s) but {len(labels_array)} label(s): give one label "
                "per point (1 = object, 0 = background)"
            )
        if not np.isin(labels_array, (0, 1)).all():
            raise PromptError("point labels must be 1 (object) or 0 (background)")
        previous = None if clear else self.prompt(frame_index, obj_id)
        prompt = ObjectPrompt(points=points_array, labels=labels_array)
        if previous is not None and previous.mask is None:
            prompt = ObjectPrompt(
                points=np.concatenate([previous.points, points_array]),
                labels=np.concatenate([previous.labels, labels_array]),
                box=previous.box,
            )
        if not (prompt.labels == 1).any() and prompt.box is None:
            existing = None if clear else self.mask(frame_index, obj_id)
            if existing is None:
                raise PromptError(
                    f"object {obj_id} has only negative clicks on frame {frame_index}: add a "
                    "positive click (label 1) on the object first"
                )
        return self._set_prompt(frame_index, obj_id, prompt, refine_current=not clear)

    def add_box(
        self, frame_index: int, obj_id: int, box: Sequence[float] | np.ndarray
    ) -> np.ndarray:
        """Draw a box (x1, y1, x2, y2) in pixels around an object; replaces earlier clicks and
        boxes for it on this frame. Returns the object's mask on that frame."""
        box_array = np.asarray(box, dtype=np.float32).reshape(-1)
        if box_array.shape != (4,):
            raise PromptError("a box is 4 numbers: x1,y1,x2,y2 (pixels)")
        x1, y1, x2, y2 = box_array
        width, height = self.info.width, self.info.height
        if not (0 <= x1 <= width and 0 <= x2 <= width and 0 <= y1 <= height and 0 <= y2 <= height):
            raise PromptError(
                f"box {x1:g},{y1:g},{x2:g},{y2:g} reaches outside the {width}x{height} frame: "
                f"x must be in 0..{width} and y in 0..{height}"
            )
        if x2 <= x1 or y2 <= y1:
            raise PromptError(
                f"box {x1:g},{y1:g},{x2:g},{y2:g} is empty: give x1,y1,x2,y2 with x2 > x1 "
                "and y2 > y1"
            )
        return self._set_prompt(frame_index, obj_id, ObjectPrompt(box=box_array))

    def add_mask(self, frame_index: int, obj_id: int, mask: np.ndarray) -> np.ndarray:
        """Give an object's exact mask (boolean, the frame's size) on a frame; replaces earlier
        prompts for it on this frame. Returns the mask."""
        mask = np.asarray(mask)
        expected = (self.info.height, self.info.width)
        if mask.ndim != 2:
            raise PromptError(
                f"mask has shape {mask.shape}: give a 2-D (height, width) mask of one object, "
                "not an image with channels"
            )
        if mask.shape != expected:
            raise PromptError(
                f"mask is {mask.shape[1]}x{mask.shape[0]} but the video is "
                f"{expected[1]}x{expected[0]}: give a mask of the video's size"
            )
        mask = mask.astype(bool)
        if not mask.any():
            raise PromptError(
                f"the mask for object {obj_id} on frame {frame_index} is empty: mark at least "
                "one pixel of the object"
            )
        return self._set_prompt(frame_index, obj_id, ObjectPrompt(mask=mask))

    def remove_object(self, obj_id: int) -> None:
        """Forget an object: its prompts and its masks on every frame."""
        if obj_id not in self.object_ids:
            raise UnknownObjectError(self._unknown_object_message(obj_id))
        for store in (self._prompts, self._prompt_masks, self._results, self._scores):
            for frame_index in list(store):
                store[frame_index].pop(obj_id, None)
                if not store[frame_index]:
                    del store[frame_index]

    def clear_frame(self, frame_index: int, obj_id: int | None = None) -> None:
        """Remove the prompts on a frame, of one object or of all."""
        self._check_frame(frame_index)
        if obj_id is not None and obj_id not in self._prompts.get(frame_index, {}):
            raise UnknownObjectError(
                f"object {obj_id} has no prompt on frame {frame_index}; prompted objects there: "
                f"{sorted(self._prompts.get(frame_index, {})) or 'none'}"
            )
        for store in (self._prompts, self._prompt_masks):
            if obj_id is None:
                store.pop(frame_index, None)
            elif frame_index in store:
                store[frame_index].pop(obj_id, None)
                if not store[frame_index]:
                    del store[frame_index]

    def reset(self) -> None:
        """Forget every prompt and every result; the video stays open."""
        self._prompts.clear()
        self._prompt_masks.clear()
        self._results.clear()
        self._scores.clear()

    def restore_prompt(
        self, frame_index: int, obj_id: int, prompt: ObjectPrompt, mask: np.ndarray
    ) -> None:
        """Put back a prompt together with the mask it resolved to, as saved earlier (a web
        session reopened after a restart), without running the engine again."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.info.height, self.info.width):
            raise PromptError(
                f"restored mask is {mask.shape[1]}x{mask.shape[0]} but the video is "
                f"{self.info.width}x{self.info.height}: it was saved for another video"
            )
        self._check_frame(frame_index)
        self._check_object_id(obj_id)
        self._prompts.setdefault(frame_index, {})[obj_id] = prompt
        masks_on_frame = self._prompt_masks.setdefault(frame_index, {})
        masks_on_frame.pop(obj_id, None)
        masks_on_frame[obj_id] = mask

    def restore_result(
        self, frame_index: int, rles: Mapping[int, dict], scores: Mapping[int, float]
    ) -> None:
        """Put back one propagated frame's masks (COCO RLE, see :func:`encode_rle`) and
        presence scores, as saved from an earlier propagation."""
        self._check_frame(frame_index)
        self._results[frame_index] = dict(rles)
        self._scores[frame_index] = dict(scores)

    # -- propagation --------------------------------------------------------------------------
    def propagate(
        self,
        start_frame: int | None = None,
        direction: Direction = "forward",
        max_frames: int | None = None,
    ) -> Iterator[FrameResult]:
        """Track every prompted object from ``start_frame``, yielding one result per frame.

        ``start_frame`` defaults to the first prompted frame (the last one when going
        backward). ``both`` goes forward from it to the end, then backward to the start. Every
        prompt on every frame conditions the tracking, so a correction on frame 40 also
        improves frames 30..39 when going forward from frame 0. ``max_frames`` bounds the
        frames visited in each direction, the start frame included.
        """
        for frame_indices in self.propagation_passes(start_frame, direction, max_frames):
            yield from self._propagate_pass(frame_indices)

    def propagation_passes(
        self,
        start_frame: int | None = None,
        direction: Direction = "forward",
        max_frames: int | None = None,
    ) -> list[range]:
        """The frames :meth:`propagate` visits with these arguments: one range per pass, in
        order (for progress bars and output planning)."""
        if direction not in ("forward", "backward", "both"):
            raise ValueError(f"direction must be forward, backward or both, not {direction!r}")
        if not self._prompts:
            raise PromptError(
                "no object is prompted yet: add a mask, a box or points on some frame first"
            )
        if start_frame is None:
            start_frame = (
                self.prompted_frames[-1] if direction == "backward" else self.prompted_frames[0]
            )
        self._check_frame(start_frame)
        passes = []
        if direction in ("forward", "both"):
            end = self.num_frames if max_frames is None else start_frame + max_frames
            passes.append(range(start_frame, min(self.num_frames, end)))
        if direction in ("backward", "both"):
            # Going both ways, the forward pass has already visited the start frame.
            first = start_frame if direction == "backward" else start_frame - 1
            stop = -1 if max_frames is None else max(-1, start_frame - max_frames)
            if first > stop:
                passes.append(range(first, stop, -1))
        return passes

    def _propagate_pass(self, frame_indices: range) -> Iterator[FrameResult]:
        tracker = self.engine.new_tracker(self.info, reverse=frame_indices.step < 0)
        try:
            yield from self._track(tracker, frame_indices)
        finally:
            for stage, seconds in getattr(tracker, "stage_seconds", {}).items():
                self.engine_stage_seconds[stage] = (
                    self.engine_stage_seconds.get(stage, 0.0) + seconds
                )

    def _track(self, tracker: Tracker, frame_indices: range) -> Iterator[FrameResult]:
        for frame_index in self.prompted_frames:
            tracker.remember(
                frame_index,
                self.frames[frame_index],
                self._prompt_masks[frame_index],
                prompted=True,
            )
        for frame_index in frame_indices:
            frame = self.frames[frame_index]
            predictions = tracker.predict(frame_index, frame)
            masks, scores = self._final_masks(frame_index, predictions)
            tracker.remember(frame_index, frame, masks, prompted=False)
            # Kept as RLE: a few KB per frame, so long videos stay cheap to hold.
            self._results[frame_index] = {obj: encode_rle(m) for obj, m in masks.items()}
            self._scores[frame_index] = scores
            yield FrameResult(frame_index, masks, scores)

    def _final_masks(
        self, frame_index: int, predictions: dict[int, ObjectPrediction]
    ) -> tuple[dict[int, np.ndarray], dict[int, float]]:
        """Non-overlapping masks: prompts win on their frame, else each pixel goes to the most
        probable object; objects judged absent get an empty mask."""
        height, width = self.info.height, self.info.width
        prompted = self._prompt_masks.get(frame_index, {})
        object_ids = sorted(set(predictions) | set(prompted) | set(self.object_ids))
        scores = {}
        present = []  # objects the engine sees on this frame, not prompted here
        for obj in object_ids:
            if obj in prompted:
                continue
            prediction = predictions.get(obj)
            scores[obj] = 0.0 if prediction is None else prediction.presence
            if prediction is not None and prediction.presence >= 0.5:
                present.append(obj)
        masks = {}
        taken = np.zeros((height, width), dtype=bool)
        # Prompts claim their pixels first; where two overlap, the one given last wins.
        for obj in reversed(list(prompted)):
            masks[obj], scores[obj] = prompted[obj] & ~taken, 1.0
            taken |= prompted[obj]
        if len(present) == 1:  # the common case, without the arg-max
            masks[present[0]] = (predictions[present[0]].probability >= 0.5) & ~taken
        elif present:
            probabilities = np.stack([predictions[obj].probability for obj in present])
            best = probabilities.argmax(0)
            free = (probabilities.max(0) >= 0.5) & ~taken
            for row, obj in enumerate(present):
                masks[obj] = (best == row) & free
        for obj in object_ids:
            if obj not in masks:
                masks[obj] = np.zeros((height, width), dtype=bool)
        return {obj: masks[obj] for obj in object_ids}, scores

    # -- helpers ------------------------------------------------------------------------------
    def _set_prompt(
        self, frame_index: int, obj_id: int, prompt: ObjectPrompt, refine_current: bool = False
    ) -> np.ndarray:
        """Store a prompt and what it resolves to. With ``refine_current``, clicks refine the
        object's current mask on the frame (a correction) rather than start from nothing."""
        self._check_frame(frame_index)
        self._check_object_id(obj_id)
        if prompt.mask is not None:
            mask = prompt.mask
        else:
            frame = self.frames[frame_index]
            previous = self.mask(frame_index, obj_id) if refine_current else None
            mask = self.engine.mask_from_prompt(frame, prompt, previous)
            if not mask.any():
                raise PromptError(
                    f"the prompt for object {obj_id} on frame {frame_index} gave an empty mask: "
                    "click inside the object or draw a box around it"
                )
        self._prompts.setdefault(frame_index, {})[obj_id] = prompt
        masks_on_frame = self._prompt_masks.setdefault(frame_index, {})
        masks_on_frame.pop(obj_id, None)  # keep the order in which prompts were last given
        masks_on_frame[obj_id] = mask
        return mask

    def _check_frame(self, frame_index: int) -> None:
        if not isinstance(frame_index, (int, np.integer)) or not 0 <= frame_index < self.num_frames:
            raise FrameIndexError(
                f"frame {frame_index} is past the video: it has {self.num_frames} frames, "
                f"numbered 0 to {self.num_frames - 1}"
            )

    def _check_object_id(self, obj_id: int) -> None:
        if not isinstance(obj_id, (int, np.integer)) or not 1 <= obj_id <= MAX_OBJECT_ID:
            raise PromptError(
                f"object id {obj_id!r} is not allowed: use an integer from 1 to {MAX_OBJECT_ID}"
            )

    def _check_points(self, points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        array = np.asarray(points, dtype=np.float32)
        if array.ndim == 1 and array.size == 2:
            array = array[None]
        if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0:
            raise PromptError("points must be (x, y) pairs, e.g. [[120, 80]]")
        width, height = self.info.width, self.info.height
        for x, y in array:
            if not (0 <= x < width and 0 <= y < height):
                raise PromptError(
                    f"point ({x:g}, {y:g}) is outside the {width}x{height} frame: x must be in "
                    f"0..{width - 1} and y in 0..{height - 1}"
                )
        return array

    def _unknown_object_message(self, obj_id: int) -> str:
        return f"unknown object id {obj_id}; the session's objects are {self.object_ids or 'none'}"
