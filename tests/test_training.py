"""The training code in training/: clip sampling and the loss going down on real features."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vidseg.demo.synthetic import render_synthetic_video
from vidseg.engines.builtin.encoder import EfficientNetLiteEncoder, encoder_variant, normalize
from vidseg.engines.builtin.network import TrackingNetwork

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import synthetic_clips  # noqa: E402
import train_tracker  # noqa: E402

LITE0 = encoder_variant("lite0").channels  # the encoder of the clips below


def _encoded_sequence(
    name: str, width: int, height: int, variant: str = "lite0", stride2: bool = False
) -> train_tracker.Sequence:
    """A synthetic clip encoded like the feature cache does (original and mirrored), with its
    stride-2 features if asked (``feature_cache.py --stride2``)."""
    video = render_synthetic_video(num_frames=8, width=width, height=height, seed=1)
    encoder = EfficientNetLiteEncoder.pretrained(variant)
    frames = torch.from_numpy(np.stack(video.frames)).permute(0, 3, 1, 2)
    masks = torch.from_numpy(np.stack(video.labels) == 1).to(torch.uint8)
    both = torch.stack([frames, frames.flip(-1)])
    with torch.inference_mode():
        encoded = [encoder(normalize(images)) for images in both]
    return train_tracker.Sequence(
        name,
        stride4=torch.stack([e.stride4 for e in encoded]).half(),
        stride8=torch.stack([e.stride8 for e in encoded]).half(),
        stride16=torch.stack([e.stride16 for e in encoded]).half(),
        masks=torch.stack([masks, masks.flip(-1)]),
        stride2=torch.stack([e.stride2 for e in encoded]).half() if stride2 else None,
    )


def _loss_after_steps(
    network: TrackingNetwork, batch: train_tracker.Batch, steps: int = 15
) -> float:
    """The clip loss on ``batch`` after ``steps`` Adam steps on it (0: as the network is)."""
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        train_tracker.clip_loss(network, batch, hard_fraction=1.0).backward()
        optimizer.step()
    with torch.no_grad():
        return train_tracker.clip_loss(network, batch, hard_fraction=1.0).item()


@pytest.fixture(scope="module")
def sequence() -> train_tracker.Sequence:
    return _encoded_sequence("synthetic", 192, 128)


def test_sampled_clips_are_cropped_consistently_and_show_the_object(sequence) -> None:
    rng = np.random.default_rng(0)
    batch = train_tracker.sample_batch([sequence], rng, batch_size=4, max_gap=3, crop_cells=(6, 8))
    assert batch.masks.shape == (4, 3, 1, 96, 128)
    assert batch.stride16.shape == (4, 3, 112, 6, 8)
    assert batch.stride8.shape == (4, 3, 40, 12, 16)
    assert batch.stride4.shape == (4, 3, 24, 24, 32)
    assert (batch.masks[:, 0].flatten(1).sum(1) >= 64).all()


def test_longer_clips_predict_every_later_frame_from_all_before_it(sequence) -> None:
    rng = np.random.default_rng(0)
    batch = train_tracker.sample_batch(
        [sequence],
        rng,
        2,
        max_gap=2,
        crop_cells=(6, 8),
        recipe=train_tracker.ClipRecipe(frames=5, absence_probability=0.0),
    )
    assert batch.masks.shape == (2, 5, 1, 96, 128)
    torch.manual_seed(0)
    network = TrackingNetwork(encoder_variant("lite0").channels)
    seen = []
    segment = network.segment

    def recording_segment(*inputs, **options):
        seen.append(inputs[4].shape[-1])  # memory cells
        return segment(*inputs, **options)

    network.segment = recording_segment
    mask_logits, presence_logits = train_tracker.clip_logits(network, batch)
    assert len(mask_logits) == len(presence_logits) == 4
    assert seen == [48 * t for t in range(1, 5)]  # 6x8 cells per frame in memory


def test_clips_mix_scales_but_take_distractors_and_occluders_from_their_own(sequence) -> None:
    larger = _encoded_sequence("synthetic-larger", 288, 160)
    assert train_tracker.same_scale([sequence, larger], larger) == [larger]
    rng = np.random.default_rng(3)
    for _ in range(3):
        # Distractors in every clip, occluders often: windows from the other scale's frames
        # would not line up with the crop.
        batch = train_tracker.sample_batch(
            [sequence, larger],
            rng,
            8,
            3,
            (6, 8),
            train_tracker.ClipRecipe(distractor_probability=1.0),
        )
        assert batch.stride16.shape == (8, 3, 112, 6, 8)
        assert batch.stride4.shape == (8, 3, 24, 24, 32)


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_a_few_steps_lower_the_loss_on_a_batch(sequence, variant) -> None:
    """The network learns on either encoder's features (train_tracker.py --encoder)."""
    torch.manual_seed(0)
    if variant != "lite0":
        sequence = _encoded_sequence("synthetic", 192, 128, variant)
    batch = train_tracker.sample_batch(
        [sequence], np.random.default_rng(1), batch_size=2, max_gap=2, crop_cells=(6, 8)
    )
    network = TrackingNetwork(encoder_variant(variant).channels)
    untrained = _loss_after_steps(network, batch, steps=0)
    assert _loss_after_steps(network, batch) < 0.7 * untrained


def test_a_stride2_decoder_trains_on_cropped_stride2_features() -> None:
    """A fourth decoder width adds a stage on the stride-2 features: clips carry them cropped
    like the masks (distractors and occluders included), and the network learns on them."""
    torch.manual_seed(0)
    sequence = _encoded_sequence("synthetic", 192, 128, stride2=True)
    other = _encoded_sequence("other", 192, 128, stride2=True)
    batch = train_tracker.sample_batch(
        [sequence, other],
        np.random.default_rng(1),
        2,
        2,
        (6, 8),
        train_tracker.ClipRecipe(distractor_probability=1.0),
    )
    assert batch.stride2.shape == (2, 3, 16, 48, 64)
    network = TrackingNetwork(encoder_variant("lite0").channels, (32, 16, 16, 8))
    assert network.mask_decoder.output_stride == 2
    logits, _ = train_tracker.clip_logits(network, batch)
    assert logits[0].shape == (2, 1, 48, 64)
    untrained = _loss_after_steps(network, batch, steps=0)
    assert _loss_after_steps(network, batch) < 0.7 * untrained


def test_hidden_frames_lose_their_truth_and_take_other_features(sequence) -> None:
    """Absence training: a hidden frame's truth is empty where the object was covered, and its
    features there come from elsewhere."""
    other = train_tracker.Sequence(
        "other",
        stride4=torch.zeros_like(sequence.stride4),
        stride8=torch.zeros_like(sequence.stride8),
        stride16=torch.zeros_like(sequence.stride16),
        masks=torch.zeros_like(sequence.masks),
    )
    rng = np.random.default_rng(2)
    # A clip with nothing hidden, then hide_object on it (at 0.5, a cut or an occluder).
    batch = train_tracker.sample_batch(
        [sequence], rng, 1, 2, (6, 8), train_tracker.ClipRecipe(absence_probability=0.0)
    )
    clip = {
        "masks": batch.masks[0].clone(),
        "stride4": batch.stride4[0].clone(),
        "stride8": batch.stride8[0].clone(),
        "stride16": batch.stride16[0].clone(),
    }
    before = clip["masks"][1].sum()
    train_tracker.hide_object(clip, 1, [other], rng, 0, (0, 0), (6, 8), probability=0.5)
    assert before > 0 and clip["masks"][1].sum() == 0
    hidden16 = (clip["stride16"][1] == 0).all(0)
    assert hidden16.any()
    assert not (clip["stride16"][0] == 0).all(0).any()  # the prompted frame is untouched


def test_a_partial_occluder_covers_one_side_of_the_object_and_keeps_the_rest(sequence) -> None:
    """Partial occlusion (``cover_part``): part of the object's box, from one side, takes
    another sequence's features and loses its truth; the rest of the object still shows."""
    other = _square_object(sequence, marker=-7.0)
    rng = np.random.default_rng(5)
    batch = train_tracker.sample_batch(
        [sequence], rng, 1, 2, (6, 8), train_tracker.ClipRecipe(absence_probability=0.0)
    )
    for _ in range(8):  # several draws: sides and shares differ
        clip = {name: getattr(batch, name)[0].clone() for name in ("masks", "stride4")}
        clip["stride8"], clip["stride16"] = batch.stride8[0].clone(), batch.stride16[0].clone()
        before = clip["masks"][1].sum()
        train_tracker.cover_part(clip, 1, [other], rng, 0, (0, 0))
        after = clip["masks"][1].sum()
        assert 0 < after < before  # part of the object hidden, part of it still visible
        covered16 = (clip["stride16"][1] == -7.0).all(0)
        assert covered16.any()
        # Where the features were replaced, the truth is empty.
        covered = covered16.repeat_interleave(16, 0).repeat_interleave(16, 1)
        assert clip["masks"][1, 0][covered].sum() == 0
        assert not (clip["stride16"][0] == -7.0).all(0).any()  # the prompted frame untouched


def _square_object(sequence: train_tracker.Sequence, marker: float) -> train_tracker.Sequence:
    """Another sequence whose features are all ``marker`` (a value no real feature map has) and
    whose object is a 64x64 square, 4x4 stride-16 cells."""
    other = train_tracker.Sequence(
        "other",
        stride4=torch.full_like(sequence.stride4, marker),
        stride8=torch.full_like(sequence.stride8, marker),
        stride16=torch.full_like(sequence.stride16, marker),
        masks=torch.zeros_like(sequence.masks),
    )
    other.masks[:, :, 32:96, 48:112] = 1
    return other


def test_a_pasted_distractor_covers_the_target_in_every_map(sequence) -> None:
    """Distractor training: another sequence's object is cut out along its mask and pasted in
    front of the target; the truth only loses pixels, and where the distractor lies the
    features are the distractor's."""
    marker = 7.0  # the distractor's features are a constant no real feature map has
    other = _square_object(sequence, marker)
    rng = np.random.default_rng(3)
    clip = train_tracker.crop_clip(sequence, 0, np.array([0, 2, 4]), (0, 0), (8, 12))
    before = {name: tensor.clone() for name, tensor in clip.items()}
    pasted = False
    for _ in range(5):  # a paste may land mostly outside the crop: try a few
        pasted_mask = train_tracker.paste_distractor(clip, [sequence, other], rng, sequence.name)
        covered16 = (clip["stride16"] == marker).all(1)  # (T, h, w)
        pasted = bool(covered16.any())
        if pasted:
            break
    assert pasted
    assert (clip["masks"] <= before["masks"]).all()
    # Where the distractor covers a stride-16 cell, the target's truth is gone there.
    covered_pixels = covered16.repeat_interleave(16, 1).repeat_interleave(16, 2)
    assert clip["masks"][:, 0][covered_pixels].sum() == 0
    # The distractor's own mask is returned (a square aligned with the cells: exactly them).
    assert pasted_mask is not None and pasted_mask.shape == clip["masks"].shape
    assert torch.equal(pasted_mask[:, 0] > 0, covered_pixels)
    # Same place at every stride: the stride-4 cover, pooled to 16, is the stride-16 cover.
    covered4 = (clip["stride4"] == marker).all(1).float()
    assert torch.equal(torch.nn.functional.max_pool2d(covered4, 4) > 0, covered16)


def test_a_distractor_behind_the_target_shows_only_around_it(sequence) -> None:
    """``paste_distractor(behind=True)``: the distractor passes behind the clip's object, so
    the truth keeps all of the object and the distractor's features land only off it."""
    marker = 7.0
    other = _square_object(sequence, marker)
    rng = np.random.default_rng(3)
    overlapped = False
    for _ in range(20):  # until a paste lands on the object
        clip = train_tracker.crop_clip(sequence, 0, np.array([0, 2, 4]), (0, 0), (8, 12))
        before = clip["masks"].clone()
        pasted = train_tracker.paste_distractor(
            clip, [sequence, other], rng, sequence.name, behind=True
        )
        if pasted is None:
            continue
        assert torch.equal(clip["masks"], before)  # the object is whole, in front
        assert not (pasted.bool() & before.bool()).any()  # what shows of it is off the object
        covered4 = (clip["stride4"] == marker).all(1)  # (T, h, w)
        object4 = torch.nn.functional.avg_pool2d(before[:, 0:1], 4)[:, 0] > 0.5
        assert not (covered4 & object4).any()
        for t in range(pasted.shape[0]):  # did the square reach over the object?
            rows, cols = torch.nonzero(pasted[t, 0], as_tuple=True)
            if len(rows):
                box = before[t, 0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
                overlapped = overlapped or bool(box.any())
    assert overlapped  # some paste went behind the object, not only beside it


def test_warped_frames_keep_features_and_mask_aligned(sequence) -> None:
    """Static-image sequences: one frame warped three ways. Features that are the mask itself
    (pooled to each stride) must still match the warped mask at every stride, and the three
    frames must differ (the warp makes the object move)."""
    clip = train_tracker.crop_clip(sequence, 0, np.array([3, 3, 3]), (0, 0), (8, 12))
    for stride in (4, 8, 16):
        pooled = torch.nn.functional.avg_pool2d(clip["masks"], stride)
        clip[f"stride{stride}"] = pooled.expand(-1, 4, -1, -1).clone()
    area_before = clip["masks"].sum()
    train_tracker.warp_clip(clip, np.random.default_rng(5), strength=1.0)
    masks = clip["masks"]
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    # Scale is at most 20% per side: the area stays within (0.8^2, 1.2^2) unless cut by the crop.
    assert 0.4 * area_before / 3 < masks[0].sum() < 1.5 * area_before / 3
    for stride in (4, 8, 16):
        expected = torch.nn.functional.avg_pool2d(masks, stride)
        error = (clip[f"stride{stride}"][:, :1] - expected).abs().mean()
        assert error < 0.05 * expected.mean() + 0.01, (stride, float(error))


def test_static_and_warped_clips_are_sampled_with_the_object_shown(sequence) -> None:
    rng = np.random.default_rng(1)
    batch = train_tracker.sample_batch(
        [sequence],
        rng,
        batch_size=6,
        max_gap=3,
        crop_cells=(6, 8),
        recipe=train_tracker.ClipRecipe(static_probability=1.0),
    )
    assert (batch.masks[:, 0].flatten(1).sum(1) >= 64).all()
    # One frame three times, each warped its own way: the masks differ between frames.
    assert all(not torch.equal(clip[0], clip[1]) for clip in batch.masks)


def test_prompt_samples_with_two_objects_target_either_one(sequence) -> None:
    """Prompt-decoder training with a pasted second object: the target is sometimes the pasted
    object (where its features are) and otherwise the frame's own, never both."""
    import train_prompts

    marker = 7.0
    other = _square_object(sequence, marker)
    own = sequence.masks[0, 0].numpy() > 0
    rng = np.random.default_rng(0)
    targets = set()
    for _ in range(30):
        features = {s: getattr(sequence, f"stride{s}")[0, 0].float() for s in (4, 8, 16)}
        target, features = train_prompts.two_objects(
            [sequence, other], sequence, rng, own, features
        )
        pasted16 = (features[16] == marker).all(0).numpy()
        pasted = pasted16.repeat(16, 0).repeat(16, 1)
        if target[pasted].all() and target.sum() == pasted.sum():
            targets.add("pasted")
        elif not target[pasted].any() and (target <= own).all() and target.any():
            targets.add("own")
    assert targets == {"pasted", "own"}


def test_iterative_training_clicks_on_the_decoders_own_errors(sequence) -> None:
    """RITM-style rounds: each adds one click where the current prediction is wrong (positive
    on a missed part, negative on a wrong one) and makes the prediction the current mask."""
    import train_prompts

    truth = sequence.masks[0, 0].numpy() > 0
    empty = train_prompts.Example({}, truth, np.zeros((0, 2)), np.zeros((0, 2)), None, None)
    rng = np.random.default_rng(0)
    empty.add_click(np.zeros_like(truth), rng)
    x, y = empty.positive[0].astype(int)
    assert len(empty.positive) == 1 and len(empty.negative) == 0 and truth[y, x]

    too_much = np.ones_like(truth)  # everything predicted: the error is all background
    empty.add_click(too_much, rng)
    x, y = empty.negative[0].astype(int)
    assert len(empty.negative) == 1 and not truth[y, x]
    assert empty.current is too_much

    # Through the decoder: every example gets one more click per round.
    features = {s: getattr(sequence, f"stride{s}")[0, 0].float() for s in (4, 8, 16)}
    examples = [
        train_prompts.Example(features, truth, empty.positive[:1], np.zeros((0, 2)), None, None)
        for _ in range(2)
    ]
    decoder = train_prompts.PromptDecoder()
    for _ in range(3):
        with torch.no_grad():
            logits = train_prompts.decode(decoder, train_prompts.collate(examples))
        train_prompts.add_clicks(examples, logits, rng)
    for example in examples:
        assert len(example.positive) + len(example.negative) == 4
        assert example.current is not None and example.current.shape == truth.shape


def test_empty_truth_can_leave_the_dice_term_out() -> None:
    """``--absent-mask-loss cross-entropy``: on a frame whose truth is empty, Dice would push
    every logit down however little mass is left; with weight 0 there only the cross-entropy
    remains, and a non-empty frame keeps its Dice."""
    logit = torch.full((2, 1, 8, 8), -2.0)
    target = torch.zeros(2, 1, 8, 8)
    target[1, :, 2:6, 2:6] = 1.0
    cross_entropy = torch.nn.functional.binary_cross_entropy_with_logits(logit, target)
    with_dice = train_tracker.segmentation_loss(logit, target, 1.0)
    without = train_tracker.segmentation_loss(logit, target, 1.0, torch.tensor([0.0, 1.0]))
    only_visible = train_tracker.segmentation_loss(logit[1:], target[1:], 1.0)
    dice_visible = only_visible - torch.nn.functional.binary_cross_entropy_with_logits(
        logit[1:], target[1:]
    )
    assert with_dice > without > cross_entropy
    assert torch.isclose(without, cross_entropy + dice_visible / 2)


def test_absent_frames_can_go_without_mask_loss(sequence) -> None:
    """``--absent-mask-loss none``: a sample whose truth is empty adds no mask loss at all,
    the others count as before; on clips the three settings rank as full > cross-entropy >
    none when a frame is empty (a cut), and agree when none is."""
    logit = torch.full((2, 1, 8, 8), -1.0)
    target = torch.zeros(2, 1, 8, 8)
    target[1, :, 2:6, 2:6] = 1.0
    visible = torch.tensor([0.0, 1.0])
    weighted = train_tracker.segmentation_loss(logit, target, 1.0, sample_weight=visible)
    only_visible = train_tracker.segmentation_loss(logit[1:], target[1:], 1.0)
    assert torch.isclose(weighted, only_visible / 2)

    torch.manual_seed(0)
    network = TrackingNetwork(LITE0)
    batch = train_tracker.sample_batch(
        [sequence],
        np.random.default_rng(2),
        2,
        2,
        (6, 8),
        train_tracker.ClipRecipe(absence_probability=0.0),
    )
    losses = [train_tracker.clip_loss(network, batch, 1.0, kind) for kind in ("full", "none")]
    assert torch.isclose(losses[0], losses[1])  # every frame shows the object
    batch.masks[:, 1:] = 0  # the object cut away from the predicted frames
    batch.stride16[:, 1:] = batch.stride16[:, 1:].flip(-1)
    losses = [
        train_tracker.clip_loss(network, batch, 1.0, kind)
        for kind in train_tracker.ABSENT_MASK_LOSSES
    ]
    assert losses[0] > losses[1] > losses[2] > 0  # the presence loss remains
    with pytest.raises(ValueError, match="absent_mask_loss"):
        train_tracker.clip_loss(network, batch, 1.0, "dice")


def test_photometric_jitter_recolours_frames_but_keeps_their_geometry() -> None:
    """The photometric cache variants: colours, brightness and sharpness change, the scene's
    layout (hence the mask) does not, and a variant is reproducible from its seed."""
    import cv2
    import feature_cache

    video = render_synthetic_video(num_frames=1, width=192, height=128, seed=2)
    frame = video.frames[0]
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(float).ravel()
    changes = []
    for seed in range(6):
        jittered = feature_cache.photometric_jitter(frame, np.random.default_rng(seed))
        again = feature_cache.photometric_jitter(frame, np.random.default_rng(seed))
        assert jittered.shape == frame.shape and jittered.dtype == np.uint8
        assert np.array_equal(jittered, again)
        jittered_gray = cv2.cvtColor(jittered, cv2.COLOR_RGB2GRAY).astype(float).ravel()
        assert np.corrcoef(gray, jittered_gray)[0, 1] > 0.8  # same layout
        changes.append(np.abs(jittered.astype(float) - frame).mean())
    assert min(changes) > 2 and np.mean(changes) > 8  # visibly re-photographed
    cache = Path("/cache")
    assert feature_cache.cache_path(cache, "bear", 576).name == "bear-576.pt"
    assert feature_cache.cache_path(cache, "bear", 576, 2).name == "bear-576-photo2.pt"


def test_feature_cache_encodes_each_sequence_once_for_all_missing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``build_cache(stride2=True)`` on a DAVIS-like folder (one synthetic train clip as mp4 and
    mask PNGs): both cache files from one encoding; a lost companion file is made again, the
    same, from one encoding that keeps only the stride-2 features; nothing to do, no encoding."""
    import av
    import cv2
    import feature_cache

    video = render_synthetic_video(num_frames=4, width=96, height=64, seed=1)
    (tmp_path / "ImageSets" / "2016").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2016" / "train.txt").write_text("clip\n")
    (tmp_path / "videos").mkdir()
    with av.open(str(tmp_path / "videos" / "clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for frame in video.frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    masks = tmp_path / "Annotations" / "480p" / "clip"
    masks.mkdir(parents=True)
    for index, labels in enumerate(video.labels):
        cv2.imwrite(str(masks / f"{index:05d}.png"), (labels == 1).astype(np.uint8) * 255)
    kept = []
    encode_frames = feature_cache.encode_frames

    def counted(encoder, frames, names=feature_cache.CACHED):
        kept.append(names)
        return encode_frames(encoder, frames, names)

    monkeypatch.setattr(feature_cache, "encode_frames", counted)
    cache = tmp_path / "cache"

    def build() -> Path:
        (path,) = feature_cache.build_cache(
            tmp_path, cache, long_side=96, encoder_name="lite0", stride2=True
        )
        return path

    path = build()
    companion = feature_cache.stride2_path(path)
    assert kept == [(*feature_cache.CACHED, "stride2")]
    assert set(torch.load(path)) == set(feature_cache.CACHED)
    first = torch.load(companion)
    assert set(first) == {"stride2"} and first["stride2"].shape[:3] == (2, 4, 16)
    companion.unlink()
    build()
    assert kept[1:] == [("stride2",)]
    assert torch.equal(torch.load(companion)["stride2"], first["stride2"])
    build()
    assert len(kept) == 2


@pytest.mark.parametrize("per_clip", [False, True])
def test_clip_frames_come_from_photometric_variants_as_often_as_asked(sequence, per_clip) -> None:
    """Each clip frame (or, per clip, each whole clip) takes a variant's features with the
    given chance; masks stay the frames' own. The variant here is the features plus 1000, to
    tell it apart."""
    variant = {name: getattr(sequence, name) + 1000 for name in ("stride4", "stride8", "stride16")}
    with_variant = train_tracker.Sequence(
        "synthetic-variants",
        sequence.stride4,
        sequence.stride8,
        sequence.stride16,
        sequence.masks,
        variants=[variant],
    )
    shifted = {}
    for probability in (0.0, 0.5, 1.0):
        batch = train_tracker.sample_batch(
            [with_variant],
            np.random.default_rng(4),
            batch_size=16,
            max_gap=3,
            crop_cells=(6, 8),
            recipe=train_tracker.ClipRecipe(
                absence_probability=0.0,
                photometric_probability=probability,
                per_clip_variant=per_clip,
            ),
        )
        from_variant = batch.stride16.flatten(2).mean(2) > 500  # (clips, frames)
        mixed = (from_variant.any(1) & ~from_variant.all(1)).any().item()
        assert mixed == (not per_clip and probability == 0.5)  # one look per clip when asked
        # All maps of a frame come from the same variant.
        assert torch.equal(from_variant, batch.stride4.flatten(2).mean(2) > 500)
        assert torch.equal(from_variant, batch.stride8.flatten(2).mean(2) > 500)
        assert (batch.masks[:, 0].flatten(1).sum(1) >= 64).all()
        shifted[probability] = from_variant.float().mean().item()
    assert shifted[0.0] == 0.0 and shifted[1.0] == 1.0
    assert 0.25 < shifted[0.5] < 0.75


def test_photometric_cache_files_tell_per_frame_variants_from_per_sequence_looks() -> None:
    import feature_cache

    cache = Path("cache")
    assert feature_cache.cache_path(cache, "bear", 576).name == "bear-576.pt"
    assert feature_cache.cache_path(cache, "bear", 576, 2).name == "bear-576-photo2.pt"
    assert feature_cache.cache_path(cache, "bear", 576, 2, per_sequence=True).name == (
        "bear-576-look2.pt"
    )
    assert feature_cache.cache_path(cache, "bear", 576, encoder="lite2").name == "bear-576-lite2.pt"


def test_procedural_frames_hold_one_target_shape_among_others() -> None:
    """Prompt-decoder frames drawn procedurally: the target is one shape's visible part, other
    shapes and clutter share the frame, and drawing is reproducible from the seed."""
    import procedural_shapes

    drawn = []
    rng = np.random.default_rng(0)
    while len(drawn) < 8:
        frame = procedural_shapes.draw_frame(rng, 96, 160)
        if frame is not None:
            drawn.append(frame)
    for image, target in drawn:
        assert image.shape == (96, 160, 3) and image.dtype == np.uint8
        assert target.shape == (96, 160) and target.dtype == bool
        assert 0.01 * target.size <= target.sum() < 0.9 * target.size
        # The target stands out from what surrounds it, and the rest of the frame is not
        # one flat colour (other shapes, clutter or texture).
        assert np.abs(image[target].mean(0) - image[~target].mean(0)).max() > 1
        assert image[~target].std(0).max() > 5
    again = procedural_shapes.draw_frame(np.random.default_rng(0), 96, 160)
    first = procedural_shapes.draw_frame(np.random.default_rng(0), 96, 160)
    assert again is not None and first is not None
    assert np.array_equal(again[0], first[0]) and np.array_equal(again[1], first[1])


def test_weight_averaging_returns_the_moving_average_and_keeps_the_last_weights(
    tmp_path,
) -> None:
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 1)
    inputs = torch.randn(32, 3)
    targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5]])
    decay, expected = 0.9, None

    def batch_loss(step: int) -> tuple[torch.Tensor, str]:
        nonlocal expected
        # The weights the previous step left, folded into the average as fit() should.
        weights = module.weight.detach().clone()
        if step:
            expected = weights if expected is None else decay * expected + (1 - decay) * weights
        return ((module(inputs) - targets) ** 2).mean(), ""

    averaged = train_tracker.fit(module, batch_loss, steps=30, lr=0.05, ema_decay=decay)
    expected = decay * expected + (1 - decay) * module.weight.detach()
    assert averaged is not module
    assert torch.allclose(averaged.weight, expected, atol=1e-6)
    assert not torch.allclose(averaged.weight, module.weight, atol=1e-3)

    output = tmp_path / "weights.pt"
    train_tracker.save_trained(module, averaged, output)
    saved, last = torch.load(output), torch.load(tmp_path / "weights-last.pt")
    assert torch.allclose(saved["weight"].float(), averaged.weight.half().float())
    assert torch.allclose(last["weight"].float(), module.weight.half().float())


def _flat_source(name: str, colour: tuple[int, int, int], background: int):
    """A 12-frame source sequence: a flat-coloured disc moving over a flat background."""
    frames = np.full((12, 120, 200, 3), background, np.uint8)
    masks = np.zeros((12, 120, 200), bool)
    rows, cols = np.mgrid[:120, :200]
    for t in range(12):
        masks[t] = (rows - 60) ** 2 + (cols - 60 - 5 * t) ** 2 < 30**2
        frames[t][masks[t]] = colour
    return synthetic_clips.SourceSequence(name, frames, masks)


def test_synthetic_sequences_paste_the_target_with_its_mask(monkeypatch) -> None:
    import cv2

    # Without the recolouring, every object keeps its own flat colour.
    monkeypatch.setattr(synthetic_clips, "photometric_jitter", lambda frame, rng: frame)
    colours = [(250, 20, 20), (20, 250, 20), (250, 250, 250)]
    sources = [
        _flat_source(name, colour, background)
        for name, colour, background in zip("abc", colours, (40, 90, 140), strict=True)
    ]
    rng = np.random.default_rng(0)
    composed = [synthetic_clips.compose_sequence(sources, rng) for _ in range(12)]
    composed = [c for c in composed if c is not None]
    assert len(composed) >= 6
    kernel = np.ones((5, 5), np.uint8)
    for frames, masks in composed:
        assert frames.shape == (8, 256, 448, 3) and frames.dtype == np.uint8
        assert masks.shape == (8, 256, 448) and masks[0].sum() >= 64
        inner = cv2.erode(masks[0].astype(np.uint8), kernel) > 0
        colour = np.median(frames[0][inner], axis=0)
        assert min(np.abs(colour - c).max() for c in colours) < 10  # one source's object
        for frame, mask in zip(frames, masks, strict=True):
            inner = cv2.erode(mask.astype(np.uint8), kernel) > 0
            outer = cv2.dilate(mask.astype(np.uint8), kernel) > 0
            like_target = np.abs(frame.astype(int) - colour).max(-1) < 10
            if inner.any():
                assert like_target[inner].mean() > 0.98  # the truth shows the target
            # The target shows nowhere else (what a distractor in front covers left the truth).
            assert (like_target & ~outer).sum() < 0.01 * like_target.size


def test_synthetic_sequences_are_drawn_as_often_as_asked(sequence) -> None:
    # The same features, but a truth that covers every pixel: clips from it are easy to tell.
    composed = train_tracker.Sequence(
        "synthetic-0",
        stride4=sequence.stride4,
        stride8=sequence.stride8,
        stride16=sequence.stride16,
        masks=torch.ones_like(sequence.masks),
        synthetic=True,
    )
    assert not sequence.masks.bool().all()
    rng = np.random.default_rng(0)
    drawn = [
        bool(
            train_tracker.sample_batch(
                [sequence, composed],
                rng,
                1,
                2,
                (6, 8),
                train_tracker.ClipRecipe(synthetic_probability=0.25),
            )
            .masks[0, 0]
            .all()
        )
        for _ in range(80)
    ]
    assert 10 <= sum(drawn) <= 30
    never = train_tracker.sample_batch([sequence, composed], rng, 16, 2, (6, 8))
    assert not never.masks[:, 0].flatten(1).all(1).any()


def test_a_synthetic_cache_file_splits_into_its_sequences(tmp_path) -> None:
    frames = train_tracker.SYNTHETIC_FRAMES
    cached = {
        "stride4": torch.arange(2 * 2 * frames, dtype=torch.float16).reshape(
            2, 2 * frames, 1, 1, 1
        ),
        "stride8": torch.zeros(2, 2 * frames, 1, 1, 1, dtype=torch.float16),
        "stride16": torch.zeros(2, 2 * frames, 1, 1, 1, dtype=torch.float16),
        "masks": torch.zeros(2, 2 * frames, 4, 4, dtype=torch.uint8),
    }
    torch.save(cached, tmp_path / "synthetic-lite2-x-seed0-000.pt")
    first, second = train_tracker.load_synthetic([tmp_path / "synthetic-lite2-x-seed0-000.pt"])
    assert first.synthetic and second.synthetic and first.name != second.name
    assert first.length == second.length == frames
    assert torch.equal(second.stride4[1, 0], cached["stride4"][1, frames])


def test_a_decoder_reading_the_previous_mask_gets_the_prompt_then_its_own_prediction(
    sequence,
) -> None:
    """``train_tracker.py --previous-mask``: the first predicted frame is decoded after the
    prompted frame's true mask, each later one after the prediction before it (at stride 4,
    as the engine keeps it); the network learns with it."""
    torch.manual_seed(0)
    batch = train_tracker.sample_batch(
        [sequence], np.random.default_rng(1), batch_size=2, max_gap=2, crop_cells=(6, 8)
    )
    network = TrackingNetwork(LITE0, previous_mask=True)
    seen, logits = [], []

    def record(module, inputs, output) -> None:
        seen.append(inputs[5])
        logits.append(output.mask_logits)

    network.mask_decoder.register_forward_hook(record)
    with torch.no_grad():
        train_tracker.clip_logits(network, batch)
    truth4 = torch.nn.functional.avg_pool2d(batch.masks[:, 0], 4)
    assert torch.equal(seen[0], truth4)
    assert torch.allclose(seen[1], torch.sigmoid(logits[0]))
    untrained = _loss_after_steps(network, batch, steps=0)
    assert _loss_after_steps(network, batch) < 0.7 * untrained
    readout = torch.zeros(2, 64, 6, 8)
    query16 = network.mask_decoder.project_query(batch.stride16[:, 1])
    with pytest.raises(ValueError, match="previous frame's mask"):
        network.mask_decoder(readout, query16, batch.stride8[:, 1], batch.stride4[:, 1])


def test_refiner_samples_follow_the_click_protocol_and_crops_stay_aligned() -> None:
    """``train_refiner``: the protocol on a frame gives the box prompt, then one prompt per
    click with all clicks so far (each the benchmark's next click); a training crop's input,
    coarse logit and truth come from the same pixels, mirrored together."""
    import train_refiner

    from vidseg.engines.builtin import BuiltinConfig, BuiltinEngine
    from vidseg.engines.builtin.mask_refiner import INPUT_CHANNELS

    video = render_synthetic_video(num_frames=1, width=256, height=160, seed=3)
    frame, truth = video.frames[0], video.labels[0] == 1
    engine = BuiltinEngine(BuiltinConfig.load(overrides={"prompts": {"refine": False}}))
    samples = train_refiner.play_protocol(engine, frame, truth, clicks=4)
    assert len(samples[0].points) == 0  # the box
    assert [len(s.points) for s in samples[1:]] == list(range(1, len(samples)))
    x, y = samples[1].points[0].astype(int)
    assert samples[1].labels[0] == 1 and truth[y, x]
    for earlier, later in zip(samples[1:], samples[2:], strict=False):
        assert np.array_equal(later.points[:-1], earlier.points)
    assert all(s.logit.dtype == np.int8 and s.logit.shape == truth.shape for s in samples)
    # The refiner in the loop (--refiner-in-loop): the samples still hold the decoder's own
    # logits; the first prompt (the box) has no earlier mask to differ by.
    looped = BuiltinEngine(BuiltinConfig.load(overrides={"prompts": {"refine": True}}))
    in_loop = train_refiner.play_protocol(looped, frame, truth, clicks=4)
    assert np.array_equal(in_loop[0].logit, samples[0].logit)
    assert np.array_equal(in_loop[1].points, samples[1].points)

    # The truth itself as the coarse logit: every crop's coarse channel matches its truth.
    data = train_refiner.SequenceSamples(
        frame[None],
        truth[None],
        [
            train_refiner.Sample(
                0,
                np.where(truth, 100, -100).astype(np.int8),
                np.array([[10.0, 10.0]], np.float32),
                np.array([0]),
            )
        ],
    )
    rng = np.random.default_rng(0)
    for _ in range(6):
        inputs, coarse, target = train_refiner.crop_example(data, data.samples[0], 64, rng)
        assert inputs.shape == (INPUT_CHANNELS, 64, 64) and target.shape == (1, 64, 64)
        assert torch.equal(coarse > 0, target > 0.5)
        assert torch.equal(inputs[3] > 0.5, target[0] > 0.5)


def test_cross_fitted_refiner_samples_come_from_decoders_that_left_them_out() -> None:
    """``train_refiner.py --cross-fit WEIGHTS:FOLDS``: each decoder plays the protocol only on
    the sequences of the folds it was trained without (``train_prompts.py --hold-out``)."""
    import train_refiner

    names = [f"s{i}" for i in range(10)]
    pairs = train_refiner.decoders_and_sequences(["/tmp/a.pt:0,1", "b.pt:2"], names)
    assert pairs == [("/tmp/a.pt", ["s0", "s1", "s5", "s6"]), ("b.pt", ["s2", "s7"])]
    for weights, played in pairs:
        folds = [int(f) for f in {"/tmp/a.pt": "01", "b.pt": "2"}[weights]]
        assert not set(played) & set(train_tracker.without_held_out(names, folds))
    assert train_refiner.decoders_and_sequences(None, names) == [(None, names)]


def _tracked_blob_sequence():
    import train_thin_parts

    rng = np.random.default_rng(0)
    frames = rng.integers(90, 110, size=(4, 240, 320, 3), dtype=np.uint8)
    masks = np.zeros((4, 240, 320), bool)
    masks[:, 80:160, 100:180] = True
    masks[:, 119:121, 180:300] = True  # a line two pixels wide
    probabilities = np.where(masks, 230, 10).astype(np.uint8)
    probabilities[:, 119:121, 180:300] = 10  # the tracker lost the line
    return train_thin_parts.TrackedSequence("blob", frames, masks, probabilities)


def test_synthetic_lines_leave_the_object_in_frame_truth_and_previous_mask() -> None:
    import train_thin_parts

    sequence = _tracked_blob_sequence()
    for seed in range(5):
        rng = np.random.default_rng(seed)
        frame, truth, previous, _ = train_thin_parts.with_synthetic_lines(
            sequence.frames[1], sequence.masks[1], sequence.masks[0], rng
        )
        added = truth & ~sequence.masks[1]
        assert added.any() and (frame[added] != sequence.frames[1][added]).any(axis=-1).mean() > 0.9
        # The new lines touch the object (they leave it from its border).
        grown = cv2.dilate(sequence.masks[1].astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        labels = cv2.connectedComponents(added.astype(np.uint8))[1]
        touching = set(np.unique(labels[grown & added]))
        assert touching >= set(np.unique(labels[added])) - {0}, seed
        assert (previous & ~sequence.masks[0]).any()  # the moved lines
        assert (truth & sequence.masks[1]).sum() == sequence.masks[1].sum()  # object kept


def test_thin_part_crops_are_supervised_in_the_band_around_the_previous_thin_parts() -> None:
    import train_thin_parts

    sequence = _tracked_blob_sequence()
    assert train_thin_parts.samples_of(sequence, min_share=0.02) == [1, 2, 3]
    assert train_thin_parts.samples_of(sequence, min_share=0.5) == []
    rng = np.random.default_rng(0)
    example = None
    while example is None:
        example = train_thin_parts.crop_example(sequence, 2, 64, 0.02, rng)
    inputs, coarse, target, band = example
    assert inputs.shape == (5, 64, 64) and coarse.shape == target.shape == band.shape
    assert 0 < band.mean() < 1
    # Supervised where the line is, and the line is in the truth but not in the tracker's.
    line = (target[0] > 0) & (band[0] > 0) & (coarse[0] < 0)
    assert line.any()
    loss = train_thin_parts.band_loss(coarse[None], target[None], band[None])
    outside = train_thin_parts.band_loss(coarse[None], target[None], torch.zeros_like(band)[None])
    assert loss > outside  # what the band covers is what counts
