"""Tests for the synthetic demo video: determinism, ground truth, occlusion, absence, mp4."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vidseg.demo import SyntheticVideo, render_synthetic_video, save_preview, write_mp4


@pytest.fixture(scope="module")
def video() -> SyntheticVideo:
    return render_synthetic_video(seed=0)


@pytest.fixture(scope="module")
def small_videos() -> dict[tuple[int, int], SyntheticVideo]:
    """A few seeds and object counts at a small size, to check the scenario is not luck."""
    return {
        (n, seed): render_synthetic_video(
            num_frames=40, width=320, height=180, num_objects=n, seed=seed
        )
        for n in (2, 3, 4)
        for seed in (1, 7)
    }


def _all_videos(video, small_videos):
    return [video, *small_videos.values()]


def test_shapes_and_types(video):
    assert video.frames.shape == (60, 360, 640, 3)
    assert video.frames.dtype == np.uint8
    assert video.labels.shape == (60, 360, 640)
    assert video.labels.dtype == np.uint8
    assert video.object_ids == (1, 2, 3)
    assert set(np.unique(video.labels)) == {0, 1, 2, 3}
    assert video.first_frames == {1: 0, 2: 0, 3: 0}
    assert (video.num_frames, video.height, video.width) == (60, 360, 640)
    assert sorted(video.depth_order) == [1, 2, 3]


def test_deterministic_for_a_seed():
    kwargs = dict(num_frames=12, width=320, height=180, num_objects=4)
    first = render_synthetic_video(seed=5, **kwargs)
    again = render_synthetic_video(seed=5, **kwargs)
    assert np.array_equal(again.frames, first.frames)
    assert np.array_equal(again.labels, first.labels)
    other = render_synthetic_video(seed=6, **kwargs)
    assert not np.array_equal(other.frames, first.frames)
    assert not np.array_equal(other.labels, first.labels)


def test_argument_checks():
    with pytest.raises(ValueError):
        render_synthetic_video(num_objects=5)
    with pytest.raises(ValueError):
        render_synthetic_video(num_objects=1)
    with pytest.raises(ValueError):
        render_synthetic_video(num_frames=0)


def test_first_frame_shows_every_object_fully(video, small_videos):
    for v in _all_videos(video, small_videos):
        assert np.array_equal(v.visible_areas[0], v.amodal_areas[0])
        assert (v.visible_areas[0] > 0.005 * v.width * v.height).all()
        lab = v.labels[0]
        border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
        assert not border.any(), "an object touches the frame border on the first frame"
        for k in v.object_ids:
            assert np.array_equal(v.mask(0, k), v.amodal_mask(0, k))


def test_areas_match_label_maps(video):
    for t in (0, 25, 59):
        for col, k in enumerate(video.object_ids):
            visible = video.mask(t, k)
            amodal = video.amodal_mask(t, k)
            assert visible.sum() == video.visible_areas[t, col]
            assert amodal.sum() == video.amodal_areas[t, col]
            assert not (visible & ~amodal).any()


def test_ground_truth_colours_match_rendering(video):
    """Each object's GT region has that object's texture colours, not the background's.

    Compared on eroded regions (anti-aliased edges left out) against the mean colour of each
    object's texture as the renderer drew it, so a GT with swapped ids fails.
    """
    frames = video.frames.astype(np.float32)
    kernel = np.ones((5, 5), np.uint8)
    colours = {k: np.array(c) for k, c in video.colours.items()}
    assert (
        min(np.linalg.norm(colours[a] - colours[b]) for a in colours for b in colours if a < b) > 40
    ), "object colours are not distinct"
    for t in range(0, video.num_frames, 6):
        frame = frames[t]
        bg = cv2.erode((video.labels[t] == 0).astype(np.uint8), kernel).astype(bool)
        bg_mean = frame[bg].mean(axis=0)
        for k in video.object_ids:
            region = cv2.erode(video.mask(t, k).astype(np.uint8), kernel).astype(bool)
            if region.sum() < 200:
                continue
            mean = frame[region].mean(axis=0)
            d_self = np.linalg.norm(mean - colours[k])
            d_bg = np.linalg.norm(mean - bg_mean)
            d_others = [np.linalg.norm(mean - colours[j]) for j in video.object_ids if j != k]
            assert d_self < 60, (t, k, d_self)
            assert d_self < 0.5 * d_bg, (t, k, d_self, d_bg)
            assert d_self < 0.5 * min(d_others), (t, k, d_self, d_others)


def _edge_profile(frames: np.ndarray, labels: np.ndarray, axis: int) -> dict[int, float]:
    """Mean colour step between neighbours across GT boundaries, with the GT shifted by s px."""
    f = frames.astype(np.float32)
    n = f.shape[axis] - 1
    step = np.abs(np.diff(f, axis=axis)).sum(axis=-1)
    edge = np.diff(labels.astype(np.int16), axis=axis) != 0
    out = {}
    for s in range(-3, 4):
        a = np.take(step, range(max(s, 0), n + min(s, 0)), axis=axis)
        b = np.take(edge, range(max(-s, 0), n + min(-s, 0)), axis=axis)
        out[s] = float(a[b].mean())
    return out


def test_ground_truth_edges_align_with_rendered_edges(video):
    """The image changes most exactly where the GT label changes: not 1 px to either side."""
    for axis in (1, 2):
        prof = _edge_profile(video.frames[::3], video.labels[::3], axis)
        assert prof[0] > 1.5 * max(prof[-1], prof[1]), prof
        assert prof[0] > 3.0 * max(prof[-3], prof[3]), prof


def _occlusions(v: SyntheticVideo):
    """(frame, occluded id, occluder id, visible fraction) where another object covers it."""
    out = []
    for t in range(v.num_frames):
        for k in v.object_ids:
            frac = v.visible_fraction(t, k)
            if 0 < frac < 0.6:
                amodal = v.amodal_mask(t, k)
                covered = v.labels[t][amodal & ~v.mask(t, k)]
                others, counts = np.unique(covered[covered != 0], return_counts=True)
                if others.size:
                    out.append((t, k, int(others[np.argmax(counts)]), frac))
    return out


def test_occlusion_happens(video, small_videos):
    for v in _all_videos(video, small_videos):
        occ = _occlusions(v)
        assert occ, "no object is more than 40% hidden by another"
        # The anchor (1) is passed over by the crosser (2), which is in front of it.
        assert any(k == 1 and j == 2 for _, k, j, _ in occ)
        assert v.depth_order.index(2) > v.depth_order.index(1)
        assert min(f for _, k, _, f in occ if k == 1) < 0.45


def test_an_object_is_absent_for_a_stretch_then_returns(video, small_videos):
    for v in _all_videos(video, small_videos):
        absent = {k: v.absent_frames(k) for k in v.object_ids}
        k = 3 if len(v.object_ids) >= 3 else 2
        frames = absent[k]
        assert len(frames) >= 3, absent
        assert list(frames) == list(range(frames[0], frames[-1] + 1)), "one contiguous stretch"
        col = v.object_ids.index(k)
        assert v.visible_areas[frames[-1] + 1 :, col].min() > 0, "it comes back and stays"
        assert v.amodal_areas[frames[0], col] == 0, "it leaves the frame"
        # Every object is visible on the last frame.
        assert (v.visible_areas[-1] > 0).all()
    assert video.absent_frames(3) and not video.absent_frames(1) and not video.absent_frames(2)


def test_frames_change_over_time(video):
    f = video.frames.astype(np.int16)
    step = np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))
    assert (step > 1.0).all(), "consecutive frames are (nearly) identical"
    # The background moves too (camera pan/zoom): compare background-only pixels far apart.
    bg = (video.labels[0] == 0) & (video.labels[-1] == 0)
    assert np.abs(f[0][bg] - f[-1][bg]).mean() > 10
    # Objects move: centroids travel, and the label maps change.
    for k in video.object_ids:
        y0, x0 = np.argwhere(video.mask(0, k)).mean(axis=0)
        y1, x1 = np.argwhere(video.mask(59, k)).mean(axis=0)
        assert np.hypot(y1 - y0, x1 - x0) > 40


def test_noise_and_flicker():
    noisy = render_synthetic_video(num_frames=8, width=160, height=96, seed=2)
    clean = render_synthetic_video(num_frames=8, width=160, height=96, seed=2, noise=False)
    assert np.array_equal(noisy.labels, clean.labels)
    diff = noisy.frames.astype(np.float32) - clean.frames
    assert 1.0 < np.abs(diff).mean() < 8.0
    per_frame = diff.mean(axis=(1, 2, 3))
    assert np.ptp(per_frame) > 0.3, "no brightness flicker"


def test_write_mp4_round_trip(tmp_path, small_videos):
    av = pytest.importorskip("av")
    v = small_videos[(3, 1)]
    path = tmp_path / "out" / "demo.mp4"
    assert write_mp4(path, v.frames, fps=24) == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["demo.mp4"]  # no temporary left
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == 24
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == v.frames.shape
    err = np.abs(decoded.astype(np.int16) - v.frames)
    assert err.mean() < 4.0
    assert np.percentile(err, 99) < 30


def test_write_mp4_odd_size_and_errors(tmp_path):
    av = pytest.importorskip("av")
    v = render_synthetic_video(num_frames=3, width=161, height=97, seed=0)
    path = write_mp4(tmp_path / "odd.mp4", v.frames, fps=29.97)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].shape == (97, 161, 3)
    with pytest.raises(ValueError):
        write_mp4(tmp_path / "bad.mp4", v.frames.astype(np.float32), fps=24)
    with pytest.raises(ValueError):
        write_mp4(tmp_path / "bad.mp4", v.frames[:0], fps=24)
    assert not list(tmp_path.glob("*bad*"))


def test_preview(tmp_path):
    path = tmp_path / "preview.png"
    v = render_synthetic_video(num_frames=30, width=320, height=180, seed=4, preview_path=path)
    image = cv2.imread(str(path))
    assert image is not None
    assert image.shape[0] > 2 * 150 and image.shape[1] >= 3 * 320
    # An explicit choice of frames works too.
    save_preview(tmp_path / "two.png", v, indices=[0, -1], tile_width=200)
    assert cv2.imread(str(tmp_path / "two.png")).shape[1] == 2 * 200 + 4
