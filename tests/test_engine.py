"""The built-in engine's parts on realistic data: encoder, memory bank, readout, prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vidseg.demo.synthetic import render_synthetic_video
from vidseg.engines.builtin import BuiltinConfig, BuiltinEngine
from vidseg.engines.builtin.encoder import EfficientNetLite0Encoder, normalize
from vidseg.engines.builtin.memory_bank import MemoryBank, MemoryFrame
from vidseg.session.prompts import ObjectPrompt

DAVIS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "davis2016"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def engine() -> BuiltinEngine:
    return BuiltinEngine()


@pytest.fixture(scope="module")
def video():
    return render_synthetic_video(num_frames=24, width=320, height=180, seed=3)


def test_encoder_feature_shapes_and_determinism() -> None:
    encoder = EfficientNetLite0Encoder.pretrained()
    image = normalize(torch.randint(0, 256, (1, 3, 96, 160), dtype=torch.uint8))
    with torch.inference_mode():
        first, second = encoder(image), encoder(image)
    assert first.stride4.shape == (1, 24, 24, 40)
    assert first.stride8.shape == (1, 40, 12, 20)
    assert first.stride16.shape == (1, 112, 6, 10)
    assert torch.equal(first.stride16, second.stride16)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_encoder_features_tell_objects_from_background(video) -> None:
    """Pretrained features, not noise: cells of one object resemble each other more than
    they resemble the background."""
    encoder = EfficientNetLite0Encoder.pretrained()
    frame = torch.from_numpy(video.frames[0]).permute(2, 0, 1)[None]
    with torch.inference_mode():
        features = torch.nn.functional.normalize(encoder(normalize(frame)).stride8[0], dim=0)
    labels = torch.from_numpy(video.labels[0][4::8, 4::8])
    features = features[:, : labels.shape[0], : labels.shape[1]]
    obj, background = features[:, labels == 1], features[:, labels == 0]
    within = (obj.T @ obj).mean()
    across = (obj.T @ background).mean()
    assert within > across + 0.1


def test_memory_bank_keeps_prompted_frames_and_bounds_recent_ones() -> None:
    bank = MemoryBank(recent_capacity=3)
    key = torch.zeros(1, 1, 1)
    for index in range(100):
        bank.add(MemoryFrame(index, index in (0, 50), key, {1: key}))
    assert [m.frame_index for m in bank.prompted] == [0, 50]
    assert [m.frame_index for m in bank.recent] == [97, 98, 99]
    bank.add(MemoryFrame(50, True, key, {2: key}))  # a correction replaces the prompted frame
    assert [m.frame_index for m in bank.prompted] == [0, 50] and bank.object_ids() == [1, 2]


def test_tracker_reads_back_the_remembered_frame(engine, video) -> None:
    """Matching a frame against itself in memory gives back its masks."""
    from vidseg.io import VideoInfo

    info = VideoInfo(width=320, height=180, num_frames=24, fps=24)
    tracker = engine.new_tracker(info)
    masks = {k: video.labels[0] == k for k in video.object_ids}
    tracker.remember(0, video.frames[0], masks, prompted=True)
    predictions = tracker.predict(0, video.frames[0])
    for k in video.object_ids:
        assert iou(predictions[k].probability >= 0.5, masks[k]) > 0.8
        assert predictions[k].presence > 0.5


def test_tracker_reports_an_object_absent_when_it_leaves(engine) -> None:
    """The synthetic clip has an object that leaves the frame for a stretch."""
    video = render_synthetic_video(num_frames=40, width=320, height=180, seed=0)
    absent = [k for k in video.object_ids if len(video.absent_frames(k))]
    assert absent
    obj = absent[0]
    from vidseg.session import TrackingSession

    session = TrackingSession(video.frames, engine=engine)
    session.add_mask(0, obj, video.labels[0] == obj)
    results = {r.frame_index: r for r in session.propagate()}
    hidden = video.absent_frames(obj)
    middle = hidden[len(hidden) // 2]
    assert results[middle].masks[obj].sum() < 0.2 * (video.labels[0] == obj).sum()


def test_box_and_click_prompts_select_the_object(engine, video) -> None:
    for k in video.object_ids:
        truth = video.labels[0] == k
        ys, xs = np.nonzero(truth)
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
        from_box = engine.mask_from_prompt(video.frames[0], ObjectPrompt(box=box))
        assert iou(from_box, truth) > 0.7, k
        centre = np.array([[xs.mean(), ys.mean()]], dtype=np.float32)
        if truth[int(centre[0, 1]), int(centre[0, 0])]:
            from_click = engine.mask_from_prompt(
                video.frames[0], ObjectPrompt(points=centre, labels=np.array([1]))
            )
            assert iou(from_click, truth) > 0.5, k


def test_negative_click_removes_a_wrong_region(engine, video) -> None:
    truth = video.labels[0] == 1
    too_big = truth.copy()
    too_big[:40, :40] = True  # a wrong blob far from the object, in the corner
    prompt = ObjectPrompt(points=np.array([[20.0, 20.0]], np.float32), labels=np.array([0]))
    corrected = engine.mask_from_prompt(video.frames[0], prompt, previous=too_big)
    assert not corrected[20, 20]
    assert iou(corrected, truth) > iou(too_big, truth)


def test_config_overrides_and_unknown_settings() -> None:
    config = BuiltinConfig.load(overrides={"readout": {"top_k": 3}})
    assert config.readout.top_k == 3
    with pytest.raises(ValueError, match="unknown setting"):
        BuiltinConfig.load(overrides={"readout": {"topk": 3}})


@pytest.mark.skipif(not DAVIS.exists(), reason="needs ../shared/data/davis2016")
def test_tracks_a_real_davis_clip(engine) -> None:
    """First 20 frames of a real train clip: the mask stays on the object."""
    from PIL import Image

    from vidseg.io import open_frames
    from vidseg.session import TrackingSession

    source = open_frames(DAVIS / "videos" / "bear.mp4")
    first = np.array(Image.open(DAVIS / "Annotations" / "480p" / "bear" / "00000.png")) > 0
    session = TrackingSession(source, engine=engine)
    session.add_mask(0, 1, first)
    scores = []
    for result in session.propagate(max_frames=20):
        truth = np.array(
            Image.open(DAVIS / "Annotations" / "480p" / "bear" / f"{result.frame_index:05d}.png")
        )
        scores.append(iou(result.masks[1], (truth[..., 0] if truth.ndim == 3 else truth) > 0))
    assert np.mean(scores) > 0.7
