"""The thin-part refiner: where it runs, what it changes, and that it draws lines on real video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vidseg.engines.base import ObjectPrediction
from vidseg.engines.builtin import BuiltinConfig
from vidseg.engines.builtin.mask_refiner import MaskRefiner
from vidseg.engines.builtin.thin_parts import (
    THIN_PART_INPUTS,
    ThinPartTracker,
    bounding_box,
    thin_part_band,
    thin_parts,
)


def body_with_line(height: int = 240, width: int = 320) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[80:160, 40:120] = True
    mask[119:121, 120:300] = True  # a line two pixels wide, 180 long
    return mask


def test_thin_parts_are_the_narrow_parts_at_any_frame_size() -> None:
    for scale in (1, 2):
        mask = np.kron(body_with_line(), np.ones((scale, scale), bool))
        parts = thin_parts(mask)
        line = np.zeros_like(mask)
        line[119 * scale : 121 * scale, 121 * scale : 300 * scale] = True
        assert parts[line].mean() > 0.95, scale
        assert not parts[90 * scale : 150 * scale, 50 * scale : 110 * scale].any()


def test_the_band_surrounds_thin_parts_and_needs_enough_of_them() -> None:
    mask = body_with_line()
    band = thin_part_band(mask, min_share=0.01)
    assert band is not None
    assert band[119:121, 130:290].all() and band[110, 200]  # around the line
    assert not band[90:150, 50:100].any()  # not the body
    # The line is 360 px of a 6,760 px mask (5%): under a 10% rule nothing runs.
    assert thin_part_band(mask, min_share=0.1) is None
    blob = np.zeros((240, 320), bool)
    blob[50:150, 50:150] = True
    assert thin_part_band(blob, min_share=0.01) is None  # its corners are all that is thin


def test_bounding_box_grows_to_multiples_of_four_within_the_frame() -> None:
    region = np.zeros((50, 50), bool)
    region[3:8, 45:50] = True
    top, bottom, left, right = bounding_box(region)
    assert (top, left) == (3, 45) and (bottom - top) % 4 == 0 and right == 50


class _FixedTracker:
    """Predicts the same probability for every object; records what it was told."""

    def __init__(self, probability: np.ndarray, presence: float = 0.9) -> None:
        self.probability, self.presence = probability, presence
        self.remembered: list[dict[int, np.ndarray]] = []

    def remember(self, frame_index, frame, masks, *, prompted) -> None:
        self.remembered.append(dict(masks))

    def predict(self, frame_index, frame):
        ids = set().union(*self.remembered)
        return {obj: ObjectPrediction(self.probability.copy(), self.presence) for obj in ids}


class _AddEverywhere(torch.nn.Module):
    """A refiner that raises every logit by 20 (so its reach shows in the output)."""

    input_channels = THIN_PART_INPUTS

    def forward(self, inputs: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        assert inputs.shape[1] == THIN_PART_INPUTS and inputs.shape[-1] % 4 == 0
        return coarse + 20


def test_only_objects_with_thin_parts_are_refined_and_only_in_their_band() -> None:
    line_object, blob = body_with_line(), np.zeros((240, 320), bool)
    blob[20:60, 200:260] = True
    coarse = np.full((240, 320), 0.1, np.float32)
    inner = _FixedTracker(coarse)
    tracker = ThinPartTracker(inner, _AddEverywhere(), min_share=0.02)
    frame = np.zeros((240, 320, 3), np.uint8)
    tracker.remember(0, frame, {1: line_object, 2: blob}, prompted=True)
    assert inner.remembered == [{1: line_object, 2: blob}]  # passed on as given
    predictions = tracker.predict(1, frame)
    np.testing.assert_array_equal(predictions[2].probability, coarse)  # no thin parts
    band = thin_part_band(line_object, 0.02)
    refined = predictions[1].probability
    assert (refined[band] > 0.99).all()
    np.testing.assert_array_equal(refined[~band], coarse[~band])
    assert predictions[1].presence == inner.presence
    assert tracker.stage_seconds["thin parts"] > 0


def test_an_object_judged_absent_is_not_refined() -> None:
    coarse = np.full((240, 320), 0.1, np.float32)
    tracker = ThinPartTracker(_FixedTracker(coarse, presence=0.2), _AddEverywhere(), 0.02)
    tracker.remember(0, np.zeros((240, 320, 3), np.uint8), {1: body_with_line()}, prompted=True)
    np.testing.assert_array_equal(tracker.predict(1, None)[1].probability, coarse)


def test_thin_parts_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="thin_parts must be in"):
        BuiltinConfig.load(overrides={"tracker": {"thin_parts": 1.5}})
    with pytest.raises(ValueError, match="train_thin_parts.py"):
        BuiltinConfig.load(overrides={"tracker": {"thin_parts_weights": "/no/such.pt"}})


def test_a_mask_refiner_reads_its_inputs_from_the_weights(tmp_path) -> None:
    refiner = MaskRefiner(width=8, input_channels=THIN_PART_INPUTS)
    path = tmp_path / "refiner.pt"
    torch.save(refiner.state_dict(), path)
    loaded = MaskRefiner.pretrained(path)
    inputs, coarse = torch.rand(1, THIN_PART_INPUTS, 32, 32), torch.zeros(1, 1, 32, 32)
    torch.testing.assert_close(loaded(inputs, coarse), refiner(inputs, coarse))


def test_the_first_frame_of_a_pass_follows_the_nearest_prompt_then_the_last_frame() -> None:
    coarse = np.zeros((240, 320), np.float32)
    tracker = ThinPartTracker(_FixedTracker(coarse), _AddEverywhere(), 0.02)
    frame = np.zeros((240, 320, 3), np.uint8)
    with_line, without = body_with_line(), np.zeros((240, 320), bool)
    without[80:160, 40:120] = True
    tracker.remember(0, frame, {1: with_line}, prompted=True)
    tracker.remember(50, frame, {1: without}, prompted=True)
    assert (tracker.predict(3, frame)[1].probability > 0.5).any()  # follows frame 0's line
    assert not (tracker.predict(45, frame)[1].probability > 0.5).any()  # frame 50's: no line
    tracker.remember(45, frame, {1: with_line}, prompted=False)
    assert (tracker.predict(46, frame)[1].probability > 0.5).any()


DAVIS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "davis2016"


@pytest.mark.skipif(not DAVIS.exists(), reason="needs ../shared/data/davis2016")
def test_the_shipped_refiner_redraws_lines_the_tracker_lost_on_real_video() -> None:
    """On DAVIS val paragliding-launch (never trained on), the frame after the prompt: the
    tracker alone keeps under a tenth of the lines (parts under 7 px wide); with the thin-part
    refiner, far more of them are drawn."""
    from vidseg.engines.builtin import BuiltinEngine
    from vidseg.evaluation import read_mask
    from vidseg.io import VideoInfo, open_frames

    frames = open_frames(DAVIS / "JPEGImages" / "480p" / "paragliding-launch")
    annotations = DAVIS / "Annotations" / "480p" / "paragliding-launch"
    first = read_mask(annotations / "00000.png") > 0
    truth = read_mask(annotations / "00001.png") > 0
    lines = thin_parts(truth)
    recall = {}
    for share in (0.0, 0.05):
        config = BuiltinConfig.load(overrides={"tracker": {"thin_parts": share}})
        tracker = BuiltinEngine(config).new_tracker(VideoInfo(854, 480, 2, 24))
        tracker.remember(0, frames[0], {1: first}, prompted=True)
        mask = tracker.predict(1, frames[1])[1].probability >= 0.5
        recall[share] = (mask & lines).sum() / lines.sum()
    assert recall[0.0] < 0.1 and recall[0.05] > 1.5 * recall[0.0], recall


class _AddEverywhereReadingThePrompt(_AddEverywhere):
    input_channels = THIN_PART_INPUTS + 1

    def forward(self, inputs: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        assert inputs.shape[1] == self.input_channels
        return coarse + 20


def test_a_refiner_reading_the_prompt_refines_around_its_thin_parts_once_the_last_mask_has_none():
    coarse = np.zeros((240, 320), np.float32)
    frame = np.zeros((240, 320, 3), np.uint8)
    body = np.zeros((240, 320), bool)
    body[80:160, 40:120] = True
    prompt_band = thin_part_band(body_with_line(), 0.02)
    for refiner, refines in ((_AddEverywhere(), False), (_AddEverywhereReadingThePrompt(), True)):
        tracker = ThinPartTracker(_FixedTracker(coarse), refiner, 0.02)
        tracker.remember(0, frame, {1: body_with_line()}, prompted=True)
        tracker.remember(1, frame, {1: body}, prompted=False)  # the line was lost
        probability = tracker.predict(2, frame)[1].probability
        assert (probability[prompt_band] > 0.99).all() == refines
