"""Tests of vidseg.evaluation: exact values on hand-made masks, the DAVIS protocol's rules, the
folder layouts, and a check on real DAVIS data (skipped without ../shared)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidseg.errors import VidsegError
from vidseg.evaluation import (
    EvaluationError,
    boundary_f_measure,
    boundary_tolerance,
    davis_statistics,
    decay_bins,
    evaluate_directories,
    evaluate_sequence,
    read_mask,
    region_similarity,
    seg2bmap,
)

DAVIS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "davis2016"
H, W = 480, 854  # DAVIS 480p: the boundary tolerance is ceil(0.008 * 979.6) = 8 pixels


def square(x: int, y: int, size: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y : y + size, x : x + size] = True
    return mask


# --- J ---------------------------------------------------------------------------------------


def test_j_identical_disjoint_and_empty():
    a = square(100, 100, 50)
    assert region_similarity(a, a) == 1.0
    assert region_similarity(a, square(300, 300, 50)) == 0.0
    empty = np.zeros((H, W), bool)
    assert region_similarity(empty, empty) == 1.0
    assert region_similarity(empty, a) == 0.0
    assert region_similarity(a, empty) == 0.0


def test_j_of_shifted_square_is_the_known_iou():
    a = square(100, 100, 40)
    b = square(110, 100, 40)  # 10 px to the right: overlap 30x40, union 50x40
    assert region_similarity(a, b) == pytest.approx(30 / 50)
    c = square(110, 110, 40)  # diagonal: overlap 30x30, union 2*1600 - 900
    assert region_similarity(a, c) == pytest.approx(900 / 2300)


def test_j_accepts_0_255_and_rejects_size_mismatch():
    a = square(10, 10, 20).astype(np.uint8) * 255
    assert region_similarity(a, a > 0) == 1.0
    with pytest.raises(EvaluationError):
        region_similarity(a, a[:-1])


# --- F ---------------------------------------------------------------------------------------


def test_boundary_tolerance_is_ceil_of_fraction_of_diagonal():
    assert boundary_tolerance((H, W)) == 8
    assert boundary_tolerance((100, 100)) == 2  # ceil(1.13)
    assert boundary_tolerance((100, 100), bound_th=3) == 3


def test_seg2bmap_draws_a_one_pixel_outline():
    mask = square(2, 2, 4, shape=(10, 10))
    bmap = seg2bmap(mask)
    # inside pixels that differ from a right/lower/lower-right neighbour, plus the pixels just
    # above and left of the square
    assert bmap[2:6, 2:6].sum() == 7  # last row and last column of the square
    assert bmap.sum() == 7 + 9  # ... and the row above and column left, with their corner
    assert not seg2bmap(np.ones((5, 5), bool)).any()


def test_f_identical_empty_and_one_empty():
    a = square(100, 100, 50)
    empty = np.zeros((H, W), bool)
    assert boundary_f_measure(a, a) == 1.0
    assert boundary_f_measure(empty, empty) == 1.0
    assert boundary_f_measure(empty, a) == 0.0
    assert boundary_f_measure(a, empty) == 0.0


def test_f_within_tolerance_is_one_and_far_off_is_zero():
    a = square(100, 100, 80)
    assert boundary_f_measure(square(107, 100, 80), a) == 1.0  # 7 px, tolerance 8
    assert boundary_f_measure(square(105, 95, 80), a) == 1.0  # 7.1 px diagonally
    assert boundary_f_measure(square(400, 300, 80), a) == 0.0
    # 9 px along x: the vertical edges (81 boundary pixels each) fall out of tolerance, the
    # horizontal edges mostly match: strictly between 0 and 1
    partial = boundary_f_measure(square(109, 100, 80), a)
    assert 0.3 < partial < 0.9


def test_f_of_a_shifted_square_is_the_known_value():
    # On a 100x100 image the tolerance is 2 px. Shift a 40 px square 5 px right: each outline
    # has 160 pixels; its two horizontal edges match the other's but for their first 3 pixels
    # (38 + 38), its vertical edges lie 5 px from the other's and only match within 2 px of the
    # other's horizontal edges (2 + 2): 80 of 160, for precision and recall alike.
    a = square(20, 20, 40, shape=(100, 100))
    b = square(25, 20, 40, shape=(100, 100))
    pb, gb = seg2bmap(b), seg2bmap(a)
    assert pb.sum() == gb.sum() == 160
    f = boundary_f_measure(b, a)
    assert f == pytest.approx(80 / 160)


# --- statistics ------------------------------------------------------------------------------


def test_decay_bins_follow_the_toolkit():
    # round(linspace(1, 48, 5)) - 1 = [0, 12, 24, 35, 47]; bins include their upper bound
    assert decay_bins(48) == [slice(0, 13), slice(12, 25), slice(24, 36), slice(35, 48)]


def test_statistics_of_a_declining_sequence():
    values = np.linspace(1.0, 0.0, 48)
    stats = davis_statistics(values)
    assert stats.mean == pytest.approx(0.5)
    assert stats.recall == pytest.approx(24 / 48)
    expected = values[0:13].mean() - values[35:48].mean()
    assert stats.decay == pytest.approx(expected)
    assert stats.decay == pytest.approx(1 - 12 / 47)
    flat = davis_statistics(np.full(10, 0.7))
    assert (flat.mean, flat.recall, flat.decay) == pytest.approx((0.7, 1.0, 0.0))
    assert math.isnan(davis_statistics([]).mean)


# --- sequences -------------------------------------------------------------------------------


def test_first_and_last_frames_are_not_scored():
    gt = [square(100, 100, 60) for _ in range(6)]
    pred = [g.copy() for g in gt]
    pred[0] = np.zeros((H, W), bool)  # wrong first and last frames do not count
    pred[-1] = square(500, 300, 60)
    scores = evaluate_sequence(pred, gt)
    obj = scores.objects[1]
    assert obj.frames.tolist() == [1, 2, 3, 4]
    assert scores.jf == 1.0
    pred[1] = np.zeros((H, W), bool)  # a wrong inner frame does
    obj = evaluate_sequence(pred, gt).objects[1]
    assert obj.j.mean == pytest.approx(0.75)
    assert obj.j.recall == pytest.approx(0.75)


def test_0_255_ground_truth_is_object_1():
    gt = [square(100, 100, 60).astype(np.uint8) * 255 for _ in range(5)]
    for pred in (
        [g > 0 for g in gt],  # bool
        [(g > 0).astype(np.uint8) for g in gt],  # ids
        [g.copy() for g in gt],  # 0/255 too
    ):
        scores = evaluate_sequence(pred, gt)
        assert list(scores.objects) == [1]
        assert scores.jf == 1.0


def test_multi_object_label_maps():
    gt = []
    for _ in range(5):
        frame = np.zeros((H, W), np.uint8)
        frame[square(100, 100, 60)] = 1
        frame[square(400, 100, 60)] = 2
        gt.append(frame)
    pred = [np.where(g == 2, 0, g) for g in gt]  # object 2 lost everywhere
    scores = evaluate_sequence(pred, gt, name="two")
    assert sorted(scores.objects) == [1, 2]
    assert scores.objects[1].jf == 1.0
    assert scores.objects[2].jf == 0.0
    assert scores.jf == 0.5


def test_empty_ground_truth_frames_score_one_when_predicted_empty():
    gt = [square(100, 100, 60) for _ in range(5)]
    gt[2] = np.zeros((H, W), bool)  # object out of view
    pred = [g.copy() for g in gt]
    assert evaluate_sequence(pred, gt).jf == 1.0
    pred[2] = square(100, 100, 60)  # reported present although absent
    obj = evaluate_sequence(pred, gt).objects[1]
    assert obj.j_per_frame.tolist() == [1.0, 0.0, 1.0]
    assert obj.f_per_frame.tolist() == [1.0, 0.0, 1.0]


def test_decay_of_a_synthetic_drifting_sequence():
    n = 50
    gt = [square(200, 150, 100) for _ in range(n)]
    pred = [square(200 + 2 * i, 150, 100) for i in range(n)]  # drifts 2 px per frame
    obj = evaluate_sequence(pred, gt).objects[1]
    j_expected = np.array([(100 - 2 * i) / (100 + 2 * i) for i in range(1, n - 1)])
    np.testing.assert_allclose(obj.j_per_frame, j_expected)
    assert obj.j.decay == pytest.approx(j_expected[0:13].mean() - j_expected[35:48].mean())
    assert obj.j.decay > 0.5 and obj.f.decay > 0.3


def test_sequence_length_mismatch_is_an_error():
    with pytest.raises(EvaluationError, match="3 predicted frames for 4"):
        evaluate_sequence([square(1, 1, 5)] * 3, [square(1, 1, 5)] * 4)


# --- folders ---------------------------------------------------------------------------------


def write_sequence(folder: Path, masks: list[np.ndarray], mode: str = "L") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, mask in enumerate(masks):
        grey = mask.astype(np.uint8) * 255
        if mode == "LA":
            image = Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA")
        else:
            image = Image.fromarray(grey, "L")
        image.save(folder / f"{i:05d}.png")


def small_square(x: int) -> np.ndarray:
    return square(x, 20, 30, shape=(96, 128))


def test_directories_with_sequence_subfolders(tmp_path):
    gt = [small_square(20) for _ in range(5)]
    write_sequence(tmp_path / "gt" / "a", gt)
    write_sequence(tmp_path / "gt" / "b", gt, mode="LA")
    write_sequence(tmp_path / "pred" / "a", gt)
    write_sequence(tmp_path / "pred" / "b", [small_square(35) for _ in range(5)])
    report = evaluate_directories(tmp_path / "pred", tmp_path / "gt")
    assert list(report.sequences) == ["a", "b"]
    assert report.sequences["a"].jf == 1.0
    j_b = 15 / 45
    assert report.sequences["b"].j_mean == pytest.approx(j_b)
    assert report.mean()["J-Mean"] == pytest.approx((1 + j_b) / 2)
    assert report.sequence_mean()["J&F"] == pytest.approx(report.mean()["J&F"])
    only_a = evaluate_directories(tmp_path / "pred", tmp_path / "gt", sequences=["a"])
    assert list(only_a.sequences) == ["a"]
    md = report.to_markdown()
    assert "| a | 1 | 1.000 |" in md and "**Mean** | 2 objects" in md
    d = report.to_dict()
    assert d["num_objects"] == 2
    assert d["sequences"]["b"]["objects"]["1"]["J-Mean"] == pytest.approx(j_b)


def test_directories_single_sequence_layout(tmp_path):
    gt = [small_square(20) for _ in range(4)]
    write_sequence(tmp_path / "gt", gt, mode="LA")
    write_sequence(tmp_path / "pred", gt)
    report = evaluate_directories(tmp_path / "pred", tmp_path / "gt")
    assert list(report.sequences) == ["gt"]
    assert report.jf == 1.0


def test_missing_prediction_is_an_error_naming_it(tmp_path):
    gt = [small_square(20) for _ in range(4)]
    write_sequence(tmp_path / "gt" / "seq", gt)
    write_sequence(tmp_path / "pred" / "seq", gt)
    (tmp_path / "pred" / "seq" / "00002.png").unlink()
    with pytest.raises(EvaluationError, match="00002.png") as info:
        evaluate_directories(tmp_path / "pred", tmp_path / "gt")
    assert isinstance(info.value, VidsegError)
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate_directories(tmp_path / "nothing", tmp_path / "gt")


def test_read_mask_takes_channel_0(tmp_path):
    grey = small_square(20).astype(np.uint8) * 255
    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA").save(tmp_path / "la.png")
    Image.fromarray(np.dstack([grey] * 3), "RGB").save(tmp_path / "rgb.png")
    for name in ("la.png", "rgb.png"):
        np.testing.assert_array_equal(read_mask(tmp_path / name), grey)


# --- real data -------------------------------------------------------------------------------


@pytest.mark.skipif(not DAVIS.is_dir(), reason="needs ../shared/data/davis2016")
def test_davis_blackswan():
    gt_root = DAVIS / "Annotations" / "480p"
    report = evaluate_directories(gt_root, gt_root, sequences=["blackswan"])
    assert report.mean()["J-Mean"] == 1.0 and report.mean()["F-Mean"] == 1.0

    gt = [read_mask(p) for p in sorted((gt_root / "blackswan").glob("*.png"))]
    scores = evaluate_sequence([gt[0]] * len(gt), gt, name="blackswan")
    # copying the first mask: J 0.545, F 0.334, J&F 0.440 (measured)
    assert 0.2 < scores.jf < 0.99
    assert scores.jf == pytest.approx(0.4395, abs=1e-3)
