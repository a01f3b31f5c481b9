"""Tests of TrackingSession: prompts, propagation order, corrections, overlaps and errors.

Most tests drive the session with a small fake engine whose tracker knows the exact motion of
synthetic moving squares, so they check the session's semantics rather than a model's quality.
A few tests at the end run the real built-in engine on a small synthetic video.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from vidseg.engines.base import ObjectPrediction
from vidseg.errors import FrameIndexError, PromptError, UnknownObjectError, VidsegError
from vidseg.io import VideoInfo
from vidseg.session import FrameResult, ObjectPrompt, TrackingSession

NUM_FRAMES, HEIGHT, WIDTH = 10, 48, 64
SIDE = 8
# Object id -> (x at frame 0, y, x pixels moved per frame, first frame it is in the video).
SQUARES = {1: (4, 6, 3, 0), 2: (50, 30, -3, 3)}


def square_mask(obj_id: int, frame_index: int) -> np.ndarray:
    x0, y, dx, first = SQUARES[obj_id]
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    if frame_index >= first:
        x = x0 + dx * frame_index
        mask[y : y + SIDE, max(0, x) : max(0, x + SIDE)] = True
    return mask


def make_video() -> np.ndarray:
    """Grey frames with a red square (object 1) moving right and, from frame 3, a blue
    square (object 2) moving left."""
    frames = np.full((NUM_FRAMES, HEIGHT, WIDTH, 3), 90, dtype=np.uint8)
    for t in range(NUM_FRAMES):
        frames[t][square_mask(1, t)] = (220, 30, 30)
        frames[t][square_mask(2, t)] = (30, 30, 220)
    return frames


def shift(mask: np.ndarray, dx: int) -> np.ndarray:
    """``mask`` moved ``dx`` pixels to the right (negative: left), zero-filled."""
    out = np.zeros_like(mask)
    if dx >= 0:
        out[:, dx:] = mask[:, : mask.shape[1] - dx]
    else:
        out[:, :dx] = mask[:, -dx:]
    return out


class FakeTracker:
    """Predicts each remembered object by moving its mask from the nearest remembered frame
    (the latest remembered one on ties) by the squares' known motion."""

    def __init__(self, engine: FakeEngine, info: VideoInfo) -> None:
        self.engine = engine
        self.info = info
        self.memory: dict[int, dict[int, np.ndarray]] = {}  # object -> frame -> mask
        self.log: list[tuple[str, int, bool]] = []  # ("remember" | "predict", frame, prompted)
        self.reverse = False

    def remember(
        self,
        frame_index: int,
        frame: np.ndarray,
        masks: Mapping[int, np.ndarray],
        *,
        prompted: bool,
    ) -> None:
        assert frame.shape == (self.info.height, self.info.width, 3)
        self.log.append(("remember", frame_index, prompted))
        for obj_id, mask in masks.items():
            assert mask.dtype == bool and mask.shape == (self.info.height, self.info.width)
            if mask.any():
                self.memory.setdefault(obj_id, {})[frame_index] = mask.copy()

    def predict(self, frame_index: int, frame: np.ndarray) -> dict[int, ObjectPrediction]:
        self.log.append(("predict", frame_index, False))
        out = {}
        for obj_id, frames in self.memory.items():
            source = min(reversed(list(frames)), key=lambda f: abs(f - frame_index))
            dx = SQUARES.get(obj_id, (0, 0, 0, 0))[2] * (frame_index - source)
            moved = shift(frames[source], dx)
            presence = self.engine.presence.get((obj_id, frame_index), 1.0)
            probability = moved.astype(np.float32) * self.engine.confidence.get(obj_id, 0.9)
            out[obj_id] = ObjectPrediction(probability=probability, presence=presence)
        return out


class FakeEngine:
    """A box becomes the box's pixels; clicks become 5x5 squares (negative ones cut out)."""

    name = "fake"

    def __init__(self) -> None:
        self.trackers: list[FakeTracker] = []
        self.prompt_calls: list[tuple[ObjectPrompt, np.ndarray | None]] = []
        self.presence: dict[tuple[int, int], float] = {}  # (object, frame) -> presence
        self.confidence: dict[int, float] = {}  # object -> probability inside its mask

    def mask_from_prompt(
        self, frame: np.ndarray, prompt: ObjectPrompt, previous: np.ndarray | None = None
    ) -> np.ndarray:
        self.prompt_calls.append((prompt, None if previous is None else previous.copy()))
        mask = np.zeros(frame.shape[:2], dtype=bool) if previous is None else previous.copy()
        if prompt.box is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in prompt.box)
            mask[y1:y2, x1:x2] = True
        for (x, y), label in zip(prompt.points, prompt.labels, strict=True):
            x, y = int(x), int(y)
            mask[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = bool(label)
        return mask

    def new_tracker(self, info: VideoInfo, *, reverse: bool = False) -> FakeTracker:
        tracker = FakeTracker(self, info)
        tracker.reverse = reverse
        self.trackers.append(tracker)
        return tracker


@pytest.fixture()
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture()
def session(engine: FakeEngine) -> TrackingSession:
    return TrackingSession(make_video(), engine=engine)


def order(results: list[FrameResult]) -> list[int]:
    return [r.frame_index for r in results]


# -- propagation ----------------------------------------------------------------------------


def test_mask_prompt_is_tracked_through_the_video(session: TrackingSession) -> None:
    prompt = square_mask(1, 0)
    returned = session.add_mask(0, 1, prompt.astype(np.uint8) * 255)
    assert returned.dtype == bool and (returned == prompt).all()
    assert session.object_ids == [1] and session.prompted_frames == [0]
    assert session.prompt(0, 1) is not None and session.prompt(0, 1).mask is not None

    results = list(session.propagate())
    assert order(results) == list(range(NUM_FRAMES))
    for result in results:
        assert result.object_ids == [1]
        assert (result.masks[1] == square_mask(1, result.frame_index)).all()
        assert result.present(1)
        # The session keeps what it found: mask() answers for any visited frame.
        assert (session.mask(result.frame_index, 1) == result.masks[1]).all()
    assert results[0].scores[1] == 1.0  # the prompted frame


@pytest.mark.parametrize(
    ("direction", "start", "max_frames", "expected"),
    [
        ("forward", None, None, [3, 4, 5, 6, 7, 8, 9]),  # default start: first prompted frame
        ("backward", None, None, [6, 5, 4, 3, 2, 1, 0]),  # default start: last prompted frame
        ("both", None, None, [3, 4, 5, 6, 7, 8, 9, 2, 1, 0]),
        ("forward", 5, None, [5, 6, 7, 8, 9]),
        ("backward", 5, None, [5, 4, 3, 2, 1, 0]),
        ("both", 5, None, [5, 6, 7, 8, 9, 4, 3, 2, 1, 0]),
        ("both", 9, None, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]),
        ("both", 0, None, list(range(10))),
        ("forward", None, 2, [3, 4]),
        ("backward", None, 2, [6, 5]),
        ("both", None, 2, [3, 4, 2]),  # the start frame counts in both directions
        ("forward", 8, 5, [8, 9]),
        ("backward", 1, 5, [1, 0]),
    ],
)
def test_propagation_order(
    session: TrackingSession,
    direction: str,
    start: int | None,
    max_frames: int | None,
    expected: list[int],
) -> None:
    session.add_mask(3, 1, square_mask(1, 3))
    session.add_mask(6, 1, square_mask(1, 6))
    results = list(session.propagate(start, direction, max_frames))  # type: ignore[arg-type]
    assert order(results) == expected


def test_both_uses_a_fresh_memory_for_each_direction(
    session: TrackingSession, engine: FakeEngine
) -> None:
    session.add_mask(4, 1, square_mask(1, 4))
    results = list(session.propagate(direction="both"))
    assert order(results) == [4, 5, 6, 7, 8, 9, 3, 2, 1, 0]
    assert len(engine.trackers) == 2
    forward, backward = engine.trackers
    assert [f for kind, f, _ in forward.log if kind == "predict"] == [4, 5, 6, 7, 8, 9]
    assert [f for kind, f, _ in backward.log if kind == "predict"] == [3, 2, 1, 0]
    # Each tracker is told its direction up front (SAM 2 reads its memory by direction).
    assert (forward.reverse, backward.reverse) == (False, True)
    for result in results:
        assert (result.masks[1] == square_mask(1, result.frame_index)).all()


def test_prompts_on_several_frames_all_condition_each_pass(
    session: TrackingSession, engine: FakeEngine
) -> None:
    session.add_mask(0, 1, square_mask(1, 0))
    session.add_mask(7, 1, square_mask(1, 7))
    session.add_box(7, 2, (29, 30, 37, 38))  # object 2 on frame 7: x = 50 - 21
    list(session.propagate(direction="forward"))
    (tracker,) = engine.trackers
    # Every prompted frame is in memory, as a prompted frame, before the first prediction.
    assert tracker.log[:2] == [("remember", 0, True), ("remember", 7, True)]
    assert tracker.log[2] == ("predict", 0, False)
    assert session.object_ids == [1, 2]


def test_object_that_first_appears_on_a_later_frame(
    session: TrackingSession, engine: FakeEngine
) -> None:
    session.add_mask(0, 1, square_mask(1, 0))
    session.add_mask(3, 2, square_mask(2, 3))
    for t in range(3):  # the (fake) model sees that object 2 is not there yet
        engine.presence[(2, t)] = 0.1
    results = list(session.propagate(direction="forward"))
    assert order(results) == list(range(NUM_FRAMES))
    for result in results:
        t = result.frame_index
        assert result.object_ids == [1, 2]  # every object on every frame, even when absent
        assert (result.masks[1] == square_mask(1, t)).all()
        assert (result.masks[2] == square_mask(2, t)).all()
        assert result.present(2) == (t >= 3)
    assert results[0].scores[2] == pytest.approx(0.1)


def test_low_presence_gives_an_empty_mask(session: TrackingSession, engine: FakeEngine) -> None:
    session.add_mask(0, 1, square_mask(1, 0))
    engine.presence[(1, 4)] = 0.49
    engine.presence[(1, 5)] = 0.5
    results = {r.frame_index: r for r in session.propagate()}
    assert not results[4].masks[1].any()
    assert results[4].scores[1] == pytest.approx(0.49)
    assert not results[4].present(1)
    assert (results[4].label_map() == 0).all()
    assert results[5].present(1) and (results[5].masks[1] == square_mask(1, 5)).all()
    # The next frame is tracked from the last frame where the object was seen.
    assert (results[6].masks[1] == square_mask(1, 6)).all()


def test_max_frames_bounds_each_direction(session: TrackingSession) -> None:
    session.add_mask(5, 1, square_mask(1, 5))
    assert order(session.propagate(direction="forward", max_frames=1)) == [5]
    assert order(session.propagate(direction="backward", max_frames=3)) == [5, 4, 3]
    assert order(session.propagate(direction="both", max_frames=3)) == [5, 6, 7, 4, 3]


# -- corrections and editing ----------------------------------------------------------------


def test_a_new_prompt_replaces_that_frames_mask(session: TrackingSession) -> None:
    session.add_mask(0, 1, square_mask(1, 0))
    before = {r.frame_index: r.masks[1] for r in session.propagate()}
    assert (session.mask(5, 1) == before[5]).all()

    corrected = np.zeros((HEIGHT, WIDTH), dtype=bool)
    corrected[20:30, 20:34] = True
    assert (session.add_mask(5, 1, corrected) == corrected).all()
    # The prompt wins at once, before propagating again...
    assert (session.mask(5, 1) == corrected).all()
    assert session.prompted_frames == [0, 5]
    after = {r.frame_index: r.masks[1] for r in session.propagate()}
    # ... and in the new results, which now track the correction onwards.
    assert (after[5] == corrected).all()
    assert (after[6] == shift(corrected, 3)).all()
    assert (after[0] == square_mask(1, 0)).all()

    # A second mask on the same frame replaces the first one.
    session.add_mask(5, 1, square_mask(1, 5))
    assert (session.mask(5, 1) == square_mask(1, 5)).all()


def test_clicks_add_up_and_refine_the_current_mask(
    session: TrackingSession, engine: FakeEngine
) -> None:
    mask = session.add_points(2, 1, [[12, 8]])
    assert mask[8, 12] and mask.sum() == 25
    mask = session.add_points(2, 1, [[20, 8], [12, 8]], labels=[1, 0])
    assert mask[8, 20] and not mask[8, 12]
    prompt = session.prompt(2, 1)
    assert prompt.points.tolist() == [[12, 8], [20, 8], [12, 8]]
    assert prompt.labels.tolist() == [1, 1, 0]
    # The engine got the previous mask, to refine it.
    assert engine.prompt_calls[-1][1] is not None and engine.prompt_calls[-1][1][8, 12]

    # A box replaces the clicks; clicks then add to the box.
    session.add_box(2, 1, (10, 6, 18, 14))
    assert session.prompt(2, 1).box is not None and len(session.prompt(2, 1).points) == 0
    mask = session.add_points(2, 1, [[11, 7]], labels=[0])
    assert session.prompt(2, 1).box is not None
    assert not mask[7, 11] and mask[12, 16]


def test_clear_true_forgets_the_earlier_clicks(session: TrackingSession) -> None:
    session.add_points(2, 1, [[12, 8], [20, 8]])
    mask = session.add_points(2, 1, [[40, 40]], clear=True)
    assert session.prompt(2, 1).points.tolist() == [[40, 40]]
    assert mask[40, 40]


def test_clear_true_starts_over_from_no_mask(session: TrackingSession, engine: FakeEngine) -> None:
    session.add_points(2, 1, [[12, 8]])
    mask = session.add_points(2, 1, [[40, 40]], clear=True)
    assert engine.prompt_calls[-1][1] is None
    assert not mask[8, 12]


def test_negative_click_refines_a_mask_prompt(session: TrackingSession, engine: FakeEngine) -> None:
    session.add_mask(0, 1, square_mask(1, 0))
    mask = session.add_points(0, 1, [[5, 7]], labels=[0])
    assert not mask[7, 5] and mask[12, 10]
    previous = engine.prompt_calls[-1][1]
    assert previous is not None and (previous == square_mask(1, 0)).all()


def test_remove_object(session: TrackingSession) -> None:
    session.add_mask(0, 1, square_mask(1, 0))
    session.add_mask(3, 2, square_mask(2, 3))
    list(session.propagate())
    assert session.mask(4, 2) is not None
    session.remove_object(2)
    assert session.object_ids == [1]
    assert session.prompted_frames == [0]
    assert session.mask(4, 2) is None and session.mask(3, 2) is None
    assert session.mask(4, 1) is not None
    assert all(r.object_ids == [1] for r in session.propagate())
    with pytest.raises(UnknownObjectError, match="unknown object id 2"):
        session.remove_object(2)


def test_clear_frame(session: TrackingSession) -> None:
    session.add_mask(0, 1, square_mask(1, 0))
    session.add_mask(5, 1, square_mask(1, 5))
    session.add_mask(5, 2, square_mask(2, 5))
    session.clear_frame(5, obj_id=2)
    assert session.prompted_frames == [0, 5]
    assert session.prompt(5, 2) is None and session.prompt(5, 1) is not None
    assert session.object_ids == [1]
    session.clear_frame(5)
    assert session.prompted_frames == [0]
    assert session.prompt(5, 1) is None
    with pytest.raises(UnknownObjectError, match="no prompt on frame 5"):
        session.clear_frame(5, obj_id=1)
    with pytest.raises(FrameIndexError):
        session.clear_frame(NUM_FRAMES)
    session.clear_frame(8)  # a frame without prompts: nothing to do
    assert order(session.propagate()) == list(range(NUM_FRAMES))


def test_reset(session: TrackingSession) -> None:
    session.add_mask(0, 1, square_mask(1, 0))
    list(session.propagate())
    session.reset()
    assert session.object_ids == [] and session.prompted_frames == []
    assert session.mask(3, 1) is None
    with pytest.raises(PromptError, match="no object is prompted"):
        list(session.propagate())
    # The video stays open: the session can be used again.
    session.add_mask(2, 1, square_mask(1, 2))
    assert order(session.propagate()) == list(range(2, NUM_FRAMES))


# -- overlaps -------------------------------------------------------------------------------


def test_a_prompted_mask_wins_over_predictions_on_its_frame(
    session: TrackingSession, engine: FakeEngine
) -> None:
    engine.confidence[2] = 0.99  # the prediction for object 2 is very sure of itself
    session.add_mask(0, 2, np.pad(np.ones((20, 20), bool), ((10, 18), (20, 24))))
    session.add_mask(4, 1, np.pad(np.ones((10, 10), bool), ((15, 23), (25, 29))))
    results = {r.frame_index: r for r in session.propagate(0, "forward")}
    on_4 = results[4]
    assert (on_4.masks[1] == session.mask(4, 1)).all()
    assert on_4.scores[1] == 1.0
    assert not (on_4.masks[1] & on_4.masks[2]).any()
    predicted_2 = shift(session.mask(0, 2), -3 * 4)
    assert (predicted_2 & on_4.masks[1]).sum() == 30  # the prediction overlaps the prompt
    assert (on_4.masks[2] == predicted_2 & ~on_4.masks[1]).all()  # and keeps the rest
    labels = on_4.label_map()
    assert (labels[on_4.masks[1]] == 1).all() and (labels[on_4.masks[2]] == 2).all()


def test_overlapping_predictions_go_to_the_most_probable_object(
    session: TrackingSession, engine: FakeEngine
) -> None:
    block = np.zeros((HEIGHT, WIDTH), dtype=bool)
    block[10:30, 10:30] = True
    session.add_mask(0, 1, block)
    session.add_mask(0, 2, shift(block, 10))  # overlap the prompts on frame 0
    engine.confidence.update({1: 0.6, 2: 0.9})
    # Frame 1 is predicted from the prompts on frame 0, where the squares overlap.
    for result in session.propagate(1, max_frames=1):
        assert not (result.masks[1] & result.masks[2]).any()
        predicted_1 = shift(block, 3 * result.frame_index)
        predicted_2 = shift(shift(block, 10), -3 * result.frame_index)
        assert (predicted_1 & predicted_2).any()
        assert (result.masks[2] == predicted_2).all()
        assert (result.masks[1] == (predicted_1 & ~predicted_2)).all()


def test_overlapping_prompts_give_disjoint_results(session: TrackingSession) -> None:
    block = np.zeros((HEIGHT, WIDTH), dtype=bool)
    block[10:30, 10:30] = True
    session.add_mask(0, 1, block)
    session.add_mask(0, 2, shift(block, 10))
    result = next(iter(session.propagate()))
    assert not (result.masks[1] & result.masks[2]).any()


def test_label_map() -> None:
    a = np.zeros((4, 6), dtype=bool)
    a[:, :4] = True
    b = np.zeros((4, 6), dtype=bool)
    b[:, 2:] = True
    result = FrameResult(3, {1: a, 7: b}, {1: 0.9, 7: 0.6})
    labels = result.label_map()
    assert labels.dtype == np.uint8 and labels.shape == (4, 6)
    assert labels[0].tolist() == [1, 1, 1, 1, 7, 7]  # the higher score wins the overlap
    result.scores[7] = 0.95
    assert result.label_map()[0].tolist() == [1, 1, 7, 7, 7, 7]
    assert result.label_map(np.int32).dtype == np.int32
    assert result.object_ids == [1, 7]
    with pytest.raises(ValueError):
        FrameResult(0, {}, {}).label_map()


# -- errors ---------------------------------------------------------------------------------


def test_frame_past_the_end(session: TrackingSession) -> None:
    with pytest.raises(FrameIndexError, match="frame 10 is past the video: it has 10 frames"):
        session.add_mask(NUM_FRAMES, 1, square_mask(1, 0))
    with pytest.raises(FrameIndexError):
        session.add_points(-1, 1, [[5, 5]])
    with pytest.raises(FrameIndexError):
        session.add_box(99, 1, (1, 1, 5, 5))
    with pytest.raises(FrameIndexError):
        session.mask(NUM_FRAMES, 1)
    session.add_mask(0, 1, square_mask(1, 0))
    with pytest.raises(FrameIndexError):
        list(session.propagate(start_frame=NUM_FRAMES))
    assert session.prompted_frames == [0]


def test_point_outside_the_frame(session: TrackingSession) -> None:
    with pytest.raises(PromptError, match=r"point \(64, 5\) is outside the 64x48 frame"):
        session.add_points(0, 1, [[WIDTH, 5]])
    with pytest.raises(PromptError, match="outside"):
        session.add_points(0, 1, [[5, -1]])
    with pytest.raises(PromptError, match="outside"):
        session.add_box(0, 1, (-5, 0, 10, 10))
    with pytest.raises(PromptError, match="is empty"):
        session.add_box(0, 1, (10, 10, 5, 20))
    with pytest.raises(PromptError, match="4 numbers"):
        session.add_box(0, 1, (1, 2, 3))
    with pytest.raises(PromptError, match="pairs"):
        session.add_points(0, 1, [1, 2, 3])
    with pytest.raises(PromptError, match="label"):
        session.add_points(0, 1, [[1, 2]], labels=[1, 0])
    with pytest.raises(PromptError, match="label"):
        session.add_points(0, 1, [[1, 2]], labels=[2])
    assert session.object_ids == []


def test_box_reaching_the_frame_edge_is_accepted(session: TrackingSession) -> None:
    mask = session.add_box(0, 1, (WIDTH - 10, HEIGHT - 10, WIDTH, HEIGHT))
    assert mask[HEIGHT - 1, WIDTH - 1]


def test_mask_of_the_wrong_size(session: TrackingSession) -> None:
    with pytest.raises(PromptError, match="mask is 32x48 but the video is 64x48"):
        session.add_mask(0, 1, np.ones((48, 32), dtype=bool))
    assert session.object_ids == []


def test_colour_mask_error_names_the_extra_dimension(session: TrackingSession) -> None:
    with pytest.raises(PromptError) as error:
        session.add_mask(0, 1, np.ones((HEIGHT, WIDTH, 3), dtype=bool))
    assert "mask is 64x48 but the video is 64x48" not in str(error.value)


def test_empty_mask(session: TrackingSession) -> None:
    with pytest.raises(PromptError, match="empty"):
        session.add_mask(0, 1, np.zeros((HEIGHT, WIDTH), dtype=bool))
    with pytest.raises(PromptError, match="gave an empty mask"):
        session.add_box(0, 1, (0.2, 0.2, 0.4, 0.4))  # the fake engine gives no pixel
    assert session.object_ids == []


def test_unknown_object_id(session: TrackingSession) -> None:
    session.add_mask(0, 1, square_mask(1, 0))
    with pytest.raises(UnknownObjectError, match=r"unknown object id 5; the session's objects"):
        session.remove_object(5)
    with pytest.raises(UnknownObjectError):
        session.clear_frame(0, obj_id=5)
    assert session.prompt(0, 5) is None and session.mask(0, 5) is None
    # A KeyError too, but its message reads as a sentence, not a quoted key.
    with pytest.raises(KeyError):
        session.remove_object(5)
    try:
        session.remove_object(5)
    except UnknownObjectError as exc:
        assert not str(exc).startswith("'")


@pytest.mark.parametrize("obj_id", [0, 256, -1, 1.5, "1"])
def test_object_ids_outside_1_to_255(session: TrackingSession, obj_id: object) -> None:
    with pytest.raises(PromptError, match="object id"):
        session.add_mask(0, obj_id, square_mask(1, 0))  # type: ignore[arg-type]
    with pytest.raises(PromptError, match="object id"):
        session.add_box(0, obj_id, (2, 2, 9, 9))  # type: ignore[arg-type]
    assert session.object_ids == []


def test_object_ids_1_and_255_are_fine(session: TrackingSession) -> None:
    session.add_mask(0, 255, square_mask(1, 0))
    session.add_mask(0, 1, square_mask(2, 5))
    assert session.object_ids == [1, 255]
    result = next(iter(session.propagate()))
    assert set(np.unique(result.label_map()).tolist()) == {0, 1, 255}


def test_negative_only_clicks_need_a_mask(session: TrackingSession) -> None:
    with pytest.raises(PromptError, match="only negative clicks"):
        session.add_points(0, 1, [[5, 5]], labels=[0])
    assert session.object_ids == [] and session.prompt(0, 1) is None
    # With a mask on another frame only, the frame itself still has nothing to refine.
    session.add_mask(1, 1, square_mask(1, 1))
    with pytest.raises(PromptError, match="only negative clicks"):
        session.add_points(0, 1, [[5, 5]], labels=[0])
    # After propagation the object has a mask there, which a negative click can refine.
    list(session.propagate(1, "backward"))
    mask = session.add_points(0, 1, [[5, 7]], labels=[0])
    assert not mask[7, 5]


def test_errors_are_vidseg_errors(session: TrackingSession) -> None:
    for call in (
        lambda: session.add_mask(0, 1, np.zeros((2, 2), bool)),
        lambda: session.add_points(0, 1, [[1000, 0]]),
        lambda: session.add_mask(50, 1, square_mask(1, 0)),
        lambda: session.remove_object(3),
    ):
        with pytest.raises(VidsegError):
            call()


def test_bad_direction(session: TrackingSession) -> None:
    session.add_mask(0, 1, square_mask(1, 0))
    with pytest.raises(ValueError, match="direction"):
        list(session.propagate(direction="sideways"))  # type: ignore[arg-type]


# -- the real built-in engine ---------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic():
    from vidseg.demo.synthetic import render_synthetic_video

    # The first frames of a 48-frame scene: everything moves as it would in a real clip.
    video = render_synthetic_video(num_frames=48, width=256, height=144, num_objects=2, seed=1)
    return video.frames[:9], video.labels[:9]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def test_builtin_engine_tracks_synthetic_objects(synthetic) -> None:
    frames, labels = synthetic
    session = TrackingSession(frames)
    middle = 4
    for obj_id in (1, 2):
        session.add_mask(middle, obj_id, labels[middle] == obj_id)
    results = list(session.propagate(direction="both"))
    assert sorted(order(results)) == list(range(len(frames)))
    for obj_id in (1, 2):
        ious = [iou(r.masks[obj_id], labels[r.frame_index] == obj_id) for r in results]
        assert np.mean(ious) > 0.5, (obj_id, np.round(ious, 2))


def test_builtin_engine_box_prompt(synthetic) -> None:
    frames, labels = synthetic
    session = TrackingSession(frames)
    for obj_id in (1, 2):
        truth = labels[0] == obj_id
        ys, xs = np.nonzero(truth)
        mask = session.add_box(0, obj_id, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        assert iou(mask, truth) > 0.6, obj_id


def test_builtin_engine_takes_a_correction_of_one_of_two_objects(synthetic) -> None:
    """A later prompt that names only object 1 (a correction) puts that frame in memory twice:
    as the prompt (object 1) and as a propagated frame (both objects). Both stay tracked."""
    frames, labels = synthetic
    session = TrackingSession(frames)
    for obj_id in (1, 2):
        session.add_mask(0, obj_id, labels[0] == obj_id)
    session.add_mask(5, 1, labels[5] == 1)
    results = list(session.propagate())
    for obj_id in (1, 2):
        ious = [iou(r.masks[obj_id], labels[r.frame_index] == obj_id) for r in results]
        assert np.mean(ious) > 0.5, (obj_id, np.round(ious, 2))
