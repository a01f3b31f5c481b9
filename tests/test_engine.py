"""The built-in engine's parts on realistic data: encoder, memory bank, learned network,
both trackers, prompts."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vidseg.demo.synthetic import render_synthetic_video
from vidseg.engines.builtin import BuiltinConfig, BuiltinEngine
from vidseg.engines.builtin.encoder import (
    EfficientNetLiteEncoder,
    encoder_variant,
    load_encoder,
    normalize,
)
from vidseg.engines.builtin.memory_attention import memory_affinity
from vidseg.engines.builtin.memory_bank import MemoryBank, MemoryFrame
from vidseg.engines.builtin.network import (
    TrackingNetwork,
    shipped_tracker_weights,
    tracker_weights_path,
)
from vidseg.engines.builtin.prompt_decoder import click_similarity, honour_clicks, prompt_maps
from vidseg.session.prompts import ObjectPrompt

DAVIS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "davis2016"


def one_network_config(overrides: dict) -> BuiltinConfig:
    """The built-in config with ``overrides`` and one tracker network: the tests that look
    inside a tracker (its memory bank, its presence checks) look at one network's."""
    return BuiltinConfig.load(overrides={**overrides, "tracker": {"members": 1}})


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module", params=["learned", "matching"])
def engine(request) -> BuiltinEngine:
    """The learned default (tracker and prompt decoder) and the training-free reference (the
    matching tracker, clicks and boxes through GrabCut)."""
    if request.param == "learned":
        return BuiltinEngine()
    overrides = {"tracker": {"kind": "matching"}, "prompts": {"decoder": "grabcut"}}
    return BuiltinEngine(BuiltinConfig.load(overrides=overrides))


@pytest.fixture(scope="module")
def video():
    return render_synthetic_video(num_frames=24, width=320, height=180, seed=3)


@pytest.mark.parametrize(
    ("variant", "channels"), [("lite0", (16, 24, 40, 112)), ("lite2", (16, 24, 48, 120))]
)
def test_encoder_feature_shapes_and_determinism(variant, channels) -> None:
    encoder = EfficientNetLiteEncoder.pretrained(variant)
    image = normalize(torch.randint(0, 256, (1, 3, 96, 160), dtype=torch.uint8))
    with torch.inference_mode():
        first, second = encoder(image), encoder(image)
    assert first.stride2.shape == (1, channels[0], 48, 80)
    assert first.stride4.shape == (1, channels[1], 24, 40)
    assert first.stride8.shape == (1, channels[2], 12, 20)
    assert first.stride16.shape == (1, channels[3], 6, 10)
    assert tuple(encoder.channels.values()) == channels
    assert torch.equal(first.stride16, second.stride16)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_unknown_encoder_variant_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="lite0, lite2"):
        BuiltinConfig.load(overrides={"encoder": {"variant": "lite3"}})


def test_a_prompt_encoder_without_shipped_weights_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="train_prompts.py --encoder lite2"):
        BuiltinConfig.load(overrides={"prompts": {"encoder": "lite2"}})


def test_weights_of_another_encoder_are_refused_with_the_fix(tmp_path) -> None:
    """Lite0-trained weights on Lite2 features: a clear error, not a shape trace."""
    with pytest.raises(ValueError, match=r"\[encoder\] variant"):
        TrackingNetwork.pretrained(tracker_weights_path("lite0"), variant="lite2")


@pytest.mark.parametrize("runtime", ["onnxruntime", "torchscript"])
@pytest.mark.parametrize(
    ("variant", "size"), [("lite0", (320, 576)), ("lite0", (176, 240)), ("lite2", (176, 240))]
)
def test_inference_runtimes_give_the_eager_encoders_features(video, runtime, variant, size) -> None:
    """The shipped ONNX exports (and the TorchScript module) compute what the PyTorch encoder
    the network was trained on computes, at any input size; a stale or wrong ONNX file fails."""
    frame = torch.from_numpy(video.frames[5]).permute(2, 0, 1)[None].float()
    image = normalize(torch.nn.functional.interpolate(frame, size=size, mode="bilinear"))
    with torch.inference_mode():
        expected = EfficientNetLiteEncoder.pretrained(variant)(image)
    got = load_encoder(runtime, variant)(image)
    for stride in (2, 4, 8, 16):
        want, have = getattr(expected, f"stride{stride}"), getattr(got, f"stride{stride}")
        assert have.shape == want.shape
        assert (have - want).abs().max() < 1e-3 * want.abs().max()


def test_encoder_features_tell_objects_from_background(video) -> None:
    """Pretrained features, not noise: cells of one object resemble each other more than
    they resemble the background."""
    encoder = EfficientNetLiteEncoder.pretrained()
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


def test_a_mask_unlike_the_object_is_judged_a_ghost_relative_to_its_usual_match() -> None:
    """Re-identification: a mask whose cells look like the prompted frame's background is
    dropped, but only against the object's own usual match (a small or plain object that
    always matches little stays present), and only when the mask is also smaller."""
    from vidseg.io import VideoInfo

    config = one_network_config(overrides={"presence": {"min_object_match": 0.3}})  # off by default
    info = VideoInfo(width=64, height=48, num_frames=9, fps=24)
    tracker = BuiltinEngine(config).new_tracker(info)
    tracker._reference_area.update({1: 400.0, 2: 400.0})
    probability = np.zeros((48, 64), np.float32)
    probability[10:30, 10:30] = 0.9  # 400 pixels, as prompted
    small = np.zeros_like(probability)
    small[10:20, 10:20] = 0.9  # 100 pixels
    for _ in range(5):  # object 1 usually matches well, object 2 (plain, tiny) hardly
        assert tracker._presence(1, probability, 0.95, object_match=0.7) == 0.95
        assert tracker._presence(2, probability, 0.95, object_match=0.05) == 0.95
    assert tracker._presence(1, small, 0.95, object_match=0.05) < 0.5  # a ghost
    # An unsure frame is not learned: neither the ghost nor "absent" enters the memory.
    frame = np.zeros((48, 64, 3), np.uint8)
    tracker.remember(1, frame, {1: np.zeros((48, 64), bool), 2: small >= 0.5}, prompted=False)
    assert [list(m.values16) for m in tracker.memory.recent] == [[2]]
    assert tracker._presence(1, probability, 0.95, object_match=0.05) == 0.95  # not smaller
    assert tracker._presence(2, small, 0.95, object_match=0.04) == 0.95  # as usual for it
    assert tracker._presence(1, small, 0.95, object_match=None) == 0.95  # cannot tell


@pytest.mark.parametrize("remember_absent", [True, False])
def test_a_frame_where_an_object_is_judged_absent_enters_its_memory_only_if_configured(
    remember_absent: bool,
) -> None:
    """With ``[memory] remember_absent = false`` an object judged absent (here by its low
    learned presence) is left out of that frame's memory, so that a wrong "absent" is not
    learned as background; the objects judged present are stored as usual."""
    from vidseg.io import VideoInfo

    config = one_network_config(overrides={"memory": {"remember_absent": remember_absent}})
    tracker = BuiltinEngine(config).new_tracker(
        VideoInfo(width=64, height=48, num_frames=9, fps=24)
    )
    probability = np.zeros((48, 64), np.float32)
    probability[10:30, 10:30] = 0.9
    assert tracker._presence(1, probability, 0.1) < 0.5  # the presence head says absent
    assert tracker._presence(2, probability, 0.9) >= 0.5
    frame = np.zeros((48, 64, 3), np.uint8)
    empty = np.zeros((48, 64), bool)
    tracker.remember(1, frame, {1: empty, 2: probability >= 0.5}, prompted=False)
    assert [sorted(m.values16) for m in tracker.memory.recent] == [
        [1, 2] if remember_absent else [2]
    ]
    # Seen again on the next frame, the object is remembered there again.
    assert tracker._presence(1, probability, 0.9) >= 0.5
    tracker.remember(2, frame, {1: probability >= 0.5, 2: empty}, prompted=False)
    assert sorted(tracker.memory.recent[-1].values16) == [1, 2]


@pytest.mark.parametrize("min_presence", [0.0, 0.9])
def test_a_frame_the_tracker_is_unsure_of_is_shown_but_not_learned(min_presence: float) -> None:
    """``[memory] min_presence``: an object judged present with a presence score under it
    keeps its mask on the frame but stays out of that frame's memory (a ghost starting on an
    occluder must not make the next frames surer of it); a sure object is stored as usual,
    and the unsure one is stored again once it is sure."""
    from vidseg.io import VideoInfo

    config = one_network_config(overrides={"memory": {"min_presence": min_presence}})
    tracker = BuiltinEngine(config).new_tracker(
        VideoInfo(width=64, height=48, num_frames=9, fps=24)
    )
    probability = np.zeros((48, 64), np.float32)
    probability[10:30, 10:30] = 0.9
    mask = probability >= 0.5
    assert tracker._presence(1, probability, 0.7) == 0.7  # present, unsure
    assert tracker._presence(2, probability, 0.95) == 0.95  # present, sure
    frame = np.zeros((48, 64, 3), np.uint8)
    tracker.remember(1, frame, {1: mask, 2: mask}, prompted=False)
    assert sorted(tracker.memory.recent[-1].values16) == ([2] if min_presence else [1, 2])
    assert tracker._presence(1, probability, 0.95) == 0.95
    tracker.remember(2, frame, {1: mask, 2: mask}, prompted=False)
    assert sorted(tracker.memory.recent[-1].values16) == [1, 2]


def test_min_presence_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[memory\] min_presence must be in \[0, 1\]"):
        BuiltinConfig.load(overrides={"memory": {"min_presence": 1.5}})


def test_a_remnant_far_smaller_than_the_prompted_object_stays_out_of_memory() -> None:
    """``[memory] min_area_ratio``: a propagated mask under that share of the object's
    prompted area is not stored (it would teach that the rest of the object is background);
    one above it is."""
    from vidseg.io import VideoInfo

    config = one_network_config(overrides={"memory": {"min_area_ratio": 0.1}})
    tracker = BuiltinEngine(config).new_tracker(
        VideoInfo(width=64, height=48, num_frames=9, fps=24)
    )
    frame = np.zeros((48, 64, 3), np.uint8)
    prompted = np.zeros((48, 64), bool)
    prompted[10:30, 10:30] = True  # 400 pixels
    tracker.remember(0, frame, {1: prompted}, prompted=True)
    remnant = np.zeros_like(prompted)
    remnant[10:15, 10:15] = True  # 25 pixels: 6% of the prompted area
    tracker.remember(1, frame, {1: remnant}, prompted=False)
    assert len(tracker.memory.recent) == 0
    partial = np.zeros_like(prompted)
    partial[10:20, 10:20] = True  # 100 pixels: 25%
    tracker.remember(2, frame, {1: partial}, prompted=False)
    assert [m.frame_index for m in tracker.memory.recent] == [2]


@pytest.mark.parametrize("keep_latest", [False, True])
def test_sparse_memory_can_keep_the_latest_frame_besides_every_nth(keep_latest: bool) -> None:
    """``[memory] every = 3``: every third propagated frame enters the FIFO; with
    ``keep_latest`` the newest frame is remembered too until the next one replaces it, and
    the read-out sees it (the bank iterates over it)."""
    from vidseg.io import VideoInfo

    config = one_network_config(
        overrides={"memory": {"every": 3, "recent_frames": 2, "keep_latest": keep_latest}}
    )
    tracker = BuiltinEngine(config).new_tracker(
        VideoInfo(width=64, height=48, num_frames=12, fps=24)
    )
    frame = np.zeros((48, 64, 3), np.uint8)
    mask = np.zeros((48, 64), bool)
    mask[10:30, 10:30] = True
    tracker.remember(0, frame, {1: mask}, prompted=True)
    seen = []
    for index in range(1, 9):
        tracker.remember(index, frame, {1: mask}, prompted=False)
        seen.append([m.frame_index for m in tracker.memory])
    assert [m.frame_index for m in tracker.memory.recent] == [3, 6]
    if keep_latest:
        assert seen == [
            [0, 1],
            [0, 2],
            [0, 3],
            [0, 3, 4],
            [0, 3, 5],
            [0, 3, 6],
            [0, 3, 6, 7],
            [0, 3, 6, 8],
        ]
    else:
        assert seen == [[0], [0], [0, 3], [0, 3], [0, 3], [0, 3, 6], [0, 3, 6], [0, 3, 6]]
    assert sorted(tracker.predict(9, frame)) == [1]


def test_a_large_mask_kept_for_its_size_does_not_lower_the_usual_match() -> None:
    """A ghost as large as the object is kept (the check cannot tell it from the object when
    it is that large), but its poor match must not become what is usual for the object: the
    next smaller ghost is still caught."""
    from vidseg.io import VideoInfo

    config = one_network_config(overrides={"presence": {"min_object_match": 0.3}})  # off by default
    info = VideoInfo(width=64, height=48, num_frames=9, fps=24)
    tracker = BuiltinEngine(config).new_tracker(info)
    tracker._reference_area[1] = 400.0
    full = np.zeros((48, 64), np.float32)
    full[10:30, 10:30] = 0.9  # 400 pixels, as prompted
    small = np.zeros_like(full)
    small[10:20, 10:20] = 0.9
    for _ in range(5):
        assert tracker._presence(1, full, 0.95, object_match=0.8) == 0.95
    for _ in range(20):  # a large ghost, just above the threshold (0.3 x 0.8)
        assert tracker._presence(1, full, 0.95, object_match=0.25) == 0.95
    assert tracker._presence(1, small, 0.95, object_match=0.2) < 0.5


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
    with pytest.raises(ValueError, match="'learned' or 'matching'"):
        BuiltinConfig.load(overrides={"tracker": {"kind": "magic"}})
    with pytest.raises(
        ValueError, match=r"\[prompts\] zoom_context must be 0 \(off\) or at least 1"
    ):
        BuiltinConfig.load(overrides={"prompts": {"zoom_context": 0.5}})
    with pytest.raises(ValueError, match=r"\[presence\] min_part_match must be in \[0, 1\]"):
        BuiltinConfig.load(overrides={"presence": {"min_part_match": 5}})


@pytest.mark.parametrize(
    ("section", "setting"),
    [("prompts", "weights"), ("tracker", "weights"), ("prompts", "refiner_weights")],
)
def test_learned_weights_can_be_chosen_in_the_config(tmp_path, section: str, setting: str) -> None:
    """``[prompts] weights``, ``[tracker] weights`` and ``[prompts] refiner_weights`` load
    another recipe's network (how benchmarks compare them); a missing file is a clear error."""
    from vidseg.engines.builtin.mask_refiner import MaskRefiner
    from vidseg.engines.builtin.network import save_half
    from vidseg.engines.builtin.prompt_decoder import PromptDecoder

    with pytest.raises(ValueError, match=rf"\[{section}\] {setting}: no file 'missing.pt'"):
        BuiltinConfig.load(overrides={section: {setting: "missing.pt"}})
    network_class, name = {
        "weights": (PromptDecoder, "logit.weight"),
        "refiner_weights": (MaskRefiner, "up1.2.weight"),
    }[setting]
    if section == "tracker":
        network_class, name = TrackingNetwork, "mask_decoder.logit.weight"
    fresh = network_class()
    save_half(fresh, tmp_path / "fresh.pt")
    overrides = {section: {setting: str(tmp_path / "fresh.pt")}}
    if setting == "refiner_weights":
        overrides[section]["refine"] = True  # off by default
    engine = BuiltinEngine(BuiltinConfig.load(overrides=overrides))
    chosen = {
        "prompts": lambda: engine.prompt_decoder if setting == "weights" else engine.mask_refiner,
        "tracker": lambda: engine.networks[0],
    }[section]()
    shipped = network_class.pretrained()
    assert torch.equal(chosen.state_dict()[name], fresh.state_dict()[name].half().float())
    assert not torch.equal(chosen.state_dict()[name], shipped.state_dict()[name])


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_shipped_weights_are_small_and_load(variant) -> None:
    assert tracker_weights_path(variant).stat().st_size < 3_000_000
    network = TrackingNetwork.pretrained(variant=variant)
    assert not network.training
    assert not any(p.requires_grad for p in network.parameters())
    # Trained, not freshly initialised: a fresh network's weights differ.
    from vidseg.engines.builtin.network import decoder_channels_of

    widths = decoder_channels_of(tracker_weights_path(variant))  # Lite0's decoder is narrower
    fresh = TrackingNetwork(encoder_variant(variant).channels, widths).state_dict()
    trained = network.state_dict()
    assert all(trained[name].shape == fresh[name].shape for name in fresh)
    name = "mask_decoder.logit.weight"
    assert not torch.allclose(trained[name], fresh[name])


def test_memory_affinity_is_a_distribution_that_finds_the_same_cell() -> None:
    generator = torch.Generator().manual_seed(0)
    memory = torch.randn(1, 64, 2, 3, generator=generator)
    query = memory[:, :, :, torch.tensor([2, 0, 1])]  # the same cells, shuffled along x
    affinity = memory_affinity(query, memory.flatten(2))
    assert affinity.shape == (1, 6, 6)
    assert torch.allclose(affinity.sum(2), torch.ones(1, 6))
    # Each query cell attends most to the memory cell it was copied from.
    expected = torch.tensor([[0, 1, 2], [3, 4, 5]])[:, [2, 0, 1]].flatten()
    assert torch.equal(affinity[0].argmax(1), expected)


def test_memory_affinity_has_no_subnormal_weights() -> None:
    """Far memory cells get weights that are normal floats (subnormals slow x86 CPUs down up to
    100x in the read-out's matrix product), and the distribution is still the plain softmax."""
    generator = torch.Generator().manual_seed(2)
    query = 4 * torch.randn(1, 64, 6, 8, generator=generator)
    memory = 4 * torch.randn(1, 64, 500, generator=generator)
    affinity = memory_affinity(query, memory)
    smallest_normal = torch.finfo(torch.float32).tiny
    assert ((affinity > 0) & (affinity < smallest_normal)).sum() == 0
    assert (affinity > 0).all()
    flat = query.flatten(2).transpose(1, 2)
    similarity = (2 * flat @ memory[0] - memory[0].pow(2).sum(0)) / 8.0
    plain = torch.softmax(similarity, dim=2)
    assert ((plain > 0) & (plain < smallest_normal)).sum() > 100  # the case that was slow
    assert torch.allclose(affinity, plain, rtol=1e-5, atol=1e-20)


def test_top_k_affinity_keeps_only_the_best_memory_cells() -> None:
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(1, 8, 2, 2, generator=generator)
    memory = torch.randn(1, 8, 10, generator=generator)
    full = memory_affinity(query, memory)
    top = memory_affinity(query, memory, top_k=3)
    assert torch.allclose(top.sum(2), torch.ones(1, 4))
    assert ((top > 0).sum(2) == 3).all()
    # The cells kept are the three the full softmax weighs most, in the same proportions.
    kept = full.topk(3, dim=2).indices
    assert torch.equal((top > 0), torch.zeros_like(top, dtype=torch.bool).scatter_(2, kept, True))
    best = full.gather(2, kept)
    assert torch.allclose(top.gather(2, kept), best / best.sum(2, keepdim=True), atol=1e-6)


def test_network_output_shapes_batch_over_objects() -> None:
    network = TrackingNetwork.pretrained()
    channels = network.feature_channels
    features16 = torch.randn(1, channels[16], 5, 7)
    masks4 = torch.rand(3, 1, 20, 28)
    with torch.inference_mode():
        values = network.memory_encoder(features16.expand(3, -1, -1, -1), masks4)
        key = network.key_projection(features16)
        query16 = network.mask_decoder.project_query(features16)
        decoded = network.segment(
            key.expand(3, -1, -1, -1),
            query16.expand(3, -1, -1, -1),
            torch.randn(1, channels[8], 10, 14).expand(3, -1, -1, -1),
            torch.randn(1, channels[4], 20, 28).expand(3, -1, -1, -1),
            key.flatten(2).expand(3, -1, -1),
            values.flatten(2),
        )
    assert values.shape == (3, 64, 5, 7) and decoded.mask_logits.shape == (3, 1, 20, 28)
    assert decoded.presence_logits.shape == (3,)
    # The last value channel is the mask itself at stride 16.
    assert torch.allclose(values[:, -1], torch.nn.functional.avg_pool2d(masks4, 4)[:, 0])


@pytest.mark.skipif(not DAVIS.exists(), reason="needs ../shared/data/davis2016")
def test_tracks_a_real_davis_clip(engine) -> None:
    """First 20 frames of a real val clip (never trained on): the mask stays on the object
    (copying the first mask gives IoU 0.31 there)."""
    from vidseg.evaluation import read_mask
    from vidseg.io import open_frames
    from vidseg.session import TrackingSession

    annotations = DAVIS / "Annotations" / "480p" / "parkour"
    source = open_frames(DAVIS / "JPEGImages" / "480p" / "parkour")
    session = TrackingSession(source, engine=engine)
    session.add_mask(0, 1, read_mask(annotations / "00000.png") > 0)
    scores = [
        iou(result.masks[1], read_mask(annotations / f"{result.frame_index:05d}.png") > 0)
        for result in session.propagate(max_frames=20)
    ]
    # The training-free tracker only beats copying; the learned one must do far better.
    minimum = {"learned": 0.6, "matching": 0.36}[engine.config.tracker.kind]
    assert np.mean(scores) > minimum, np.mean(scores)


@pytest.mark.skipif(not DAVIS.exists(), reason="needs ../shared/data/davis2016")
@pytest.mark.parametrize("min_part_match", [0.0, 0.05])
def test_a_loose_part_on_the_background_is_dropped_and_the_object_kept(
    min_part_match: float,
) -> None:
    """``[presence] min_part_match``: on a real frame, a predicted mask made of the true object
    and a second region on background that the prompted frame showed as background loses that
    region (its cells match the prompt's background); the object's part stays whole. Off (0),
    the mask is left as it is."""
    from vidseg.evaluation import read_mask
    from vidseg.io import VideoInfo, open_frames

    annotations = DAVIS / "Annotations" / "480p" / "camel"
    frames = open_frames(DAVIS / "JPEGImages" / "480p" / "camel")
    first, later = frames[0], frames[30]
    truth0 = read_mask(annotations / "00000.png") > 0
    truth = read_mask(annotations / "00030.png") > 0
    config = one_network_config(overrides={"presence": {"min_part_match": min_part_match}})
    tracker = BuiltinEngine(config).new_tracker(VideoInfo(854, 480, len(frames), 24))
    tracker.remember(0, first, {1: truth0}, prompted=True)
    # A 120x120 region as far as can be from the object on both frames: background.
    distance = cv2.distanceTransform((~(truth | truth0)).astype(np.uint8), cv2.DIST_L2, 5)
    distance[:60], distance[-60:], distance[:, :60], distance[:, -60:] = 0, 0, 0, 0
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    loose = np.zeros_like(truth)
    loose[y - 60 : y + 60, x - 60 : x + 60] = True
    probability = np.where(truth | loose, 0.9, 0.05).astype(np.float32)
    tracker._encode(30, later)
    kept = tracker._drop_unmatched_parts(1, tracker._query, probability) >= 0.5
    assert (kept & truth).sum() == truth.sum()  # the object's part is whole
    assert (kept & loose).any() == (min_part_match == 0)


@pytest.mark.skipif(not DAVIS.exists(), reason="needs ../shared/data/davis2016")
def test_learned_prompt_decoder_follows_a_box_and_clicks_on_a_real_frame() -> None:
    """The shipped prompt decoder on a val frame (never trained on): a tight box, or one click,
    selects the cow that was meant, not the herd."""
    from vidseg.evaluation import read_mask
    from vidseg.io import open_frames
    from vidseg.session import TrackingSession

    frame = open_frames(DAVIS / "JPEGImages" / "480p" / "cows")[0]
    truth = read_mask(DAVIS / "Annotations" / "480p" / "cows" / "00000.png") > 0
    engine = BuiltinEngine()
    ys, xs = np.nonzero(truth)
    session = TrackingSession(frame[None], engine=engine)
    assert iou(session.add_box(0, 1, [xs.min(), ys.min(), xs.max(), ys.max()]), truth) > 0.85
    inside = cv2.distanceTransform(truth.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(inside.argmax()), inside.shape)
    one_click = session.add_points(0, 2, [[x, y]])
    assert iou(one_click, truth) > 0.7
    near = np.zeros_like(truth)  # the truth's box, grown by 40 px: the other cows lie outside
    near[max(ys.min() - 40, 0) : ys.max() + 40, max(xs.min() - 40, 0) : xs.max() + 40] = True
    assert one_click[~near].sum() < 0.02 * one_click.sum()


def test_prompt_maps_place_clicks_box_and_current_mask() -> None:
    current = np.zeros((10, 12), np.float32)
    current[2:5, 3:6] = 1.0
    maps = prompt_maps(
        (10, 12), np.array([[2.5, 3.5]]), np.array([[9.5, 8.5]]), np.array([6, 1, 10, 4]), current
    )
    assert maps.shape == (4, 10, 12)
    assert maps[0, 3, 2] == 1 and maps[0, 8, 9] == 0  # positive disc at (x 2.5, y 3.5)
    assert maps[1, 8, 9] == 1 and maps[1, 3, 2] == 0
    assert maps[2, 1:4, 6:10].all() and maps[2].sum() == 12
    assert torch.equal(maps[3], torch.from_numpy(current))


def test_an_ignored_click_still_flips_the_spot_it_lands_on() -> None:
    mask = np.zeros((60, 80), bool)
    mask[10:50, 10:40] = True  # the decoder's mask; clicks at (x 30, y 30) and (x 65, y 30)
    points, labels = np.array([[30.0, 30.0], [65.0, 30.0]]), np.array([0, 1])
    honoured = honour_clicks(mask, points, labels, max_radius=6)
    assert not honoured[30, 30] and honoured[30, 65]
    # Each flip is a disc at most max_radius wide, bounded by where the mask changes.
    removed, added = mask & ~honoured, honoured & ~mask
    assert removed.sum() == pytest.approx(np.pi * 36, rel=0.15)
    assert np.abs(np.argwhere(removed) - [30, 30]).max() <= 6
    assert added.sum() == pytest.approx(np.pi * 36, rel=0.15) and not added[:, :40].any()
    # Clicks the mask already agrees with change nothing.
    assert np.array_equal(honour_clicks(honoured, points, labels, max_radius=6), honoured)
    near_edge = honour_clicks(mask, np.array([[12.0, 30.0]]), np.array([0]), max_radius=6)
    assert (mask & ~near_edge).sum() < np.pi * 4**2  # 3 px from the edge: a 3-px disc only


def test_click_similarity_is_highest_at_the_click(video) -> None:
    encoder = EfficientNetLiteEncoder.pretrained()
    frame = torch.from_numpy(video.frames[0]).permute(2, 0, 1)[None]
    with torch.inference_mode():
        features16 = encoder(normalize(frame)).stride16
    similarity = click_similarity(features16, np.array([[3, 4]]), np.zeros((0, 2)))
    assert similarity.shape == (2,) + features16.shape[-2:]
    assert similarity[0, 4, 3] == pytest.approx(1.0, abs=1e-5)
    assert similarity[0].max() <= 1.0 + 1e-5 and not similarity[1].any()


@pytest.mark.skipif(not DAVIS.exists(), reason="needs ../shared/data/davis2016")
@pytest.mark.parametrize("sequence", ["drift-chicane", "drift-straight"])
def test_a_small_object_is_decoded_in_a_window_around_it(sequence) -> None:
    """A car covering about 1% of a val frame (never trained on), given by its tight box: in
    the whole frame the decoder sees it at a few stride-4 cells; decoded in a window three
    times its size (``[prompts] zoom_context``), its mask follows the car far better."""
    from vidseg.evaluation import read_mask
    from vidseg.io import open_frames
    from vidseg.session import TrackingSession

    frame = open_frames(DAVIS / "JPEGImages" / "480p" / sequence)[0]
    truth = read_mask(DAVIS / "Annotations" / "480p" / sequence / "00000.png") > 0
    ys, xs = np.nonzero(truth)
    box = [xs.min(), ys.min(), xs.max(), ys.max()]
    scores = {}
    for context in (0.0, 3.0):
        config = BuiltinConfig.load(overrides={"prompts": {"zoom_context": context}})
        session = TrackingSession(frame[None], engine=BuiltinEngine(config))
        scores[context] = iou(session.add_box(0, 1, box), truth)
    assert scores[3.0] > scores[0.0] + 0.1, scores
    assert BuiltinConfig.load().prompts.zoom_context == 3.0


def test_the_window_follows_the_clicked_part_not_a_stray_blob() -> None:
    """A correction on a small object whose mask also holds a stray blob across the frame:
    the window is sized by the part the user clicked on (the blob stays as it was, outside
    the window), so the object is still seen up close."""
    from vidseg.engines.builtin.engine import context_window

    mask = np.zeros((480, 854), bool)
    mask[200:230, 400:440] = True  # the object
    mask[20:40, 20:40] = True  # a stray blob
    prompt = ObjectPrompt(points=np.array([[420.0, 215.0]]), labels=np.array([1]))
    assert context_window(mask.shape, prompt, mask, context=3.0) == (360, 170, 480, 260)
    elsewhere = ObjectPrompt(points=np.array([[700.0, 400.0]]), labels=np.array([1]))
    assert context_window(mask.shape, elsewhere, mask, context=3.0) is None


@pytest.mark.parametrize(
    ("widths", "key_kernel"), [((32, 16, 8), 1), ((32, 16, 8, 4), 1), ((32, 16, 8), 3)]
)
def test_tracker_weights_of_another_shape_load_with_their_shape(
    tmp_path, video, widths, key_kernel
) -> None:
    """``train_tracker.py --decoder-channels`` trains a wider or narrower mask decoder, or one
    with a fourth stage at stride 2, and ``--key-kernel 3`` a key projection that sees each
    cell's neighbours; the engine reads both from the weights file, so such weights run as
    they are, with full-size masks either way."""
    from vidseg.engines.builtin.network import (
        decoder_channels_of,
        key_kernel_of,
        read_weights,
        save_half,
    )
    from vidseg.session import TrackingSession

    narrow = TrackingNetwork(encoder_variant("lite2").channels, widths, key_kernel=key_kernel)
    save_half(narrow, tmp_path / "narrow.pt")
    assert decoder_channels_of(tmp_path / "narrow.pt") == widths
    assert key_kernel_of(read_weights(tmp_path / "narrow.pt")) == key_kernel
    engine = BuiltinEngine(
        BuiltinConfig.load(overrides={"tracker": {"weights": str(tmp_path / "narrow.pt")}})
    )
    assert engine.networks[0].mask_decoder.logit.weight.shape[1] == widths[-1]
    assert engine.networks[0].key_projection.projection.kernel_size == (key_kernel, key_kernel)
    assert engine.networks[0].mask_decoder.output_stride == (2 if len(widths) == 4 else 4)
    session = TrackingSession(video.frames[:3], engine=engine)
    session.add_mask(0, 1, video.mask(0, video.object_ids[0]))
    results = list(session.propagate())
    assert [r.frame_index for r in results] == [0, 1, 2]
    assert results[0].masks[1].shape == video.frames[0].shape[:2]


def test_weights_that_read_the_previous_mask_decode_each_frame_after_the_last(
    tmp_path, video
) -> None:
    """Tracker weights trained with ``--previous-mask`` are recognised from the file; the
    engine then decodes each frame after the object's mask on the frame before: the prompt
    (resized to stride 4) after the prompted frame, else its own prediction."""
    from vidseg.engines.builtin.network import read_weights, reads_previous_mask, save_half
    from vidseg.session import TrackingSession

    torch.manual_seed(0)
    save_half(
        TrackingNetwork(encoder_variant("lite2").channels, previous_mask=True), tmp_path / "p.pt"
    )
    assert reads_previous_mask(read_weights(tmp_path / "p.pt"))
    assert not reads_previous_mask(read_weights(tracker_weights_path("lite2")))
    engine = BuiltinEngine(
        BuiltinConfig.load(overrides={"tracker": {"weights": str(tmp_path / "p.pt")}})
    )
    decoder = engine.networks[0].mask_decoder
    assert decoder.reads_previous_mask
    seen, logits = [], []

    def record(module, inputs, output) -> None:
        seen.append(inputs[5])
        logits.append(output.mask_logits)

    hook = decoder.register_forward_hook(record)
    try:
        session = TrackingSession(video.frames[:3], engine=engine)
        prompt = video.mask(0, video.object_ids[0])
        session.add_mask(0, 1, prompt)
        list(session.propagate())
    finally:
        hook.remove()
    assert len(seen) == 3  # frames 0 (prompted: predicted, then the prompt wins), 1 and 2
    height, width = seen[0].shape[-2:]
    prompt4 = cv2.resize(prompt.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    assert np.allclose(seen[1][0, 0].numpy(), prompt4) and prompt4.max() == 1.0
    assert torch.allclose(seen[2], torch.sigmoid(logits[1]))
    assert not torch.allclose(seen[2], seen[1], atol=0.1)
    assert seen[0].shape == logits[0].shape


def test_the_refiner_changes_only_the_box_around_the_object_and_clicks() -> None:
    """Outside the object's box (grown by the margin) the coarse logit is kept as it is;
    inside, the refiner's correction is added (a fresh refiner's is not zero)."""
    from vidseg.engines.builtin.mask_refiner import CROP_MARGIN, MaskRefiner, refine_logit

    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    coarse = torch.full((120, 200), -6.0)
    coarse[40:60, 50:90] = 6.0
    points, labels = np.array([[150.0, 50.0]]), np.array([0])
    refined = refine_logit(MaskRefiner().eval(), image, coarse, points, labels)
    inside = torch.zeros(120, 200, dtype=torch.bool)
    inside[40 - CROP_MARGIN : 60 + CROP_MARGIN, 50 - CROP_MARGIN : 151 + CROP_MARGIN] = True
    assert torch.equal(refined[~inside], coarse[~inside])
    assert not torch.equal(refined[inside], coarse[inside])
    assert (
        refine_logit(
            MaskRefiner().eval(), image, torch.full((120, 200), -6.0), points[:0], labels[:0]
        )
        .eq(-6.0)
        .all()
    )


@pytest.mark.skipif(not DAVIS.exists(), reason="needs ../shared/data/davis2016")
def test_the_refiner_fits_box_masks_to_val_frames_better() -> None:
    """``[prompts] refine`` (off by default): on the 15 val first frames (never trained on),
    the masks from the objects' tight boxes, redrawn at the frame's resolution by the shipped
    refiner, match the truth better on average than the decoder's own (0.78 -> 0.81 when
    measured)."""
    from vidseg.evaluation import read_mask
    from vidseg.io import open_frames
    from vidseg.session import TrackingSession

    engines = {
        refine: BuiltinEngine(BuiltinConfig.load(overrides={"prompts": {"refine": refine}}))
        for refine in (False, True)
    }
    scores = {False: [], True: []}
    for sequence in (DAVIS / "ImageSets" / "2016" / "val.txt").read_text().split():
        frame = open_frames(DAVIS / "JPEGImages" / "480p" / sequence)[0]
        truth = read_mask(DAVIS / "Annotations" / "480p" / sequence / "00000.png") > 0
        ys, xs = np.nonzero(truth)
        for refine, engine in engines.items():
            session = TrackingSession(frame[None], engine=engine)
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            scores[refine].append(iou(session.add_box(0, 1, box), truth))
    assert np.mean(scores[True]) > np.mean(scores[False]) + 0.01, scores


def _first_predictions(engine: BuiltinEngine, video) -> tuple:
    """A new tracker and its predictions on frame 1 of ``video`` after its frame-0 masks were
    remembered."""
    from vidseg.io import VideoInfo

    tracker = engine.new_tracker(VideoInfo(width=320, height=180, num_frames=24, fps=24))
    masks = {k: video.labels[0] == k for k in video.object_ids}
    tracker.remember(0, video.frames[0], masks, prompted=True)
    return tracker, tracker.predict(1, video.frames[1])


def test_two_networks_average_their_masks_and_encode_each_frame_once(video) -> None:
    """``[tracker] weights`` naming two networks (separated as in PATH) runs both on one
    encoding per frame and averages them: on the first predicted frame (where both memories
    hold the same prompt) the ensemble's probability is the mean of the two networks' own."""
    first, second = (str(path) for path in shipped_tracker_weights("lite2")[:2])

    def engine_with(weights: str) -> BuiltinEngine:
        return BuiltinEngine(BuiltinConfig.load(overrides={"tracker": {"weights": weights}}))

    _, alone_first = _first_predictions(engine_with(first), video)
    _, alone_second = _first_predictions(engine_with(second), video)
    both = engine_with(f"{first}{os.pathsep}{second}")
    calls = []
    encoder = both.encoder
    both.encoder = lambda image: calls.append(1) or encoder(image)
    tracker, together = _first_predictions(both, video)
    assert len(tracker.members) == 2
    assert len(calls) == 2  # frames 0 and 1, once each for both networks
    for k in video.object_ids:
        expected = (alone_first[k].probability + alone_second[k].probability) / 2
        assert np.allclose(together[k].probability, expected, atol=1e-5)
        # The two networks differ (else averaging them would be pointless).
        assert iou(alone_first[k].probability >= 0.5, alone_second[k].probability >= 0.5) < 1.0
    assert {k: p.presence > 0.5 for k, p in together.items()} == dict.fromkeys(
        video.object_ids, True
    )


def test_members_runs_the_first_networks_only() -> None:
    """``[tracker] members``: 1 runs seed 0's network alone (the fast setting); 0, all."""
    from vidseg.engines.builtin.tracker import BuiltinTracker, EnsembleTracker
    from vidseg.io import VideoInfo

    info = VideoInfo(width=320, height=180, num_frames=2, fps=24)
    one = BuiltinEngine(BuiltinConfig.load(overrides={"tracker": {"members": 1}}))
    assert isinstance(one.new_tracker(info), BuiltinTracker)
    assert torch.equal(
        one.networks[0].mask_decoder.logit.weight,
        TrackingNetwork.pretrained(tracker_weights_path("lite2")).mask_decoder.logit.weight,
    )
    shipped = len(shipped_tracker_weights("lite2"))
    everything = BuiltinEngine(BuiltinConfig.load())
    assert len(everything.networks) == shipped >= 2
    assert isinstance(everything.new_tracker(info), EnsembleTracker)
    with pytest.raises(ValueError, match=r"\[tracker\] members must be 0"):
        BuiltinConfig.load(overrides={"tracker": {"members": -1}})
    with pytest.raises(ValueError, match=r"\[tracker\] weights: no file 'missing.pt'"):
        BuiltinConfig.load(
            overrides={"tracker": {"weights": f"{tracker_weights_path()}{os.pathsep}missing.pt"}}
        )
