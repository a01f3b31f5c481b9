"""Tests of vidseg.outputs: palette PNGs, COCO RLE, overlay videos, all-or-nothing writes."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from vidseg.errors import FrameIndexError, OutputError
from vidseg.io import VideoInfo
from vidseg.outputs import (
    DAVIS_PALETTE,
    CocoRleWriter,
    OverlayVideoWriter,
    PaletteMaskWriter,
    decode_rle,
    object_color,
    read_coco_masks,
    render_overlay,
    write_palette_png,
)


class Boom(Exception):
    """Stands for whatever might go wrong in the middle of tracking."""


def blob_masks(rng: np.random.Generator, height: int, width: int, count: int) -> list[np.ndarray]:
    """``count`` realistic masks: a few overlapping ellipses each, some with holes."""
    masks = []
    for _ in range(count):
        mask = np.zeros((height, width), np.uint8)
        for _ in range(rng.integers(1, 4)):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(3, width // 3)), int(rng.integers(3, height // 3)))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        if rng.random() < 0.5:
            hole = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.circle(mask, hole, int(rng.integers(2, 8)), 0, -1)
        masks.append(mask.astype(bool))
    return masks


def label_map_of(masks: list[np.ndarray]) -> np.ndarray:
    labels = np.zeros(masks[0].shape, np.uint8)
    for obj_id, mask in enumerate(masks, start=1):
        labels[mask] = obj_id
    return labels


def leftovers(folder: Path) -> list[str]:
    """Hidden temporaries that writers might have left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- palette -----------------------------------------------------------------------------------


def test_palette_is_the_davis_one() -> None:
    assert DAVIS_PALETTE[:5].tolist() == [
        [0, 0, 0],
        [128, 0, 0],
        [0, 128, 0],
        [128, 128, 0],
        [0, 0, 128],
    ]
    assert DAVIS_PALETTE[8].tolist() == [64, 0, 0] and DAVIS_PALETTE[255].tolist() == [
        224,
        224,
        192,
    ]
    assert len({tuple(c) for c in DAVIS_PALETTE.tolist()}) == 256
    assert object_color(2) == (0, 128, 0)
    with pytest.raises(ValueError, match="0..255"):
        object_color(256)


# -- palette PNGs ------------------------------------------------------------------------------


def test_png_round_trip(tmp_path: Path) -> None:
    labels = label_map_of(blob_masks(np.random.default_rng(0), 48, 64, 3))
    labels[0, :4] = [0, 1, 2, 3]  # every id present for sure
    path = tmp_path / "mask.png"
    write_palette_png(path, labels.astype(np.int64))  # any integer dtype is accepted
    image = Image.open(path)
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), labels)
    palette = np.array(image.getpalette()[: 256 * 3]).reshape(-1, 3)
    for obj_id in range(4):
        assert tuple(palette[obj_id]) == object_color(obj_id)
    assert np.asarray(image.convert("RGB"))[0, 1].tolist() == [128, 0, 0]
    assert leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="0..255"):
        write_palette_png(tmp_path / "big.png", np.full((2, 2), 300))


def test_mask_writer_names_frames_after_video_indices(tmp_path: Path) -> None:
    out_dir = tmp_path / "masks"
    labels = np.zeros((8, 8), np.uint8)
    with PaletteMaskWriter(out_dir) as writer:
        # Backward tracking writes from the end; frame 3 is written twice, the last one wins.
        for index in (5, 4, 3, 12):
            writer.write(index, labels)
        writer.write(3, labels + 2)
        assert not out_dir.exists()  # nothing under the final name until close
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "00003.png",
        "00004.png",
        "00005.png",
        "00012.png",
    ]
    assert np.asarray(Image.open(out_dir / "00003.png")).max() == 2
    assert leftovers(tmp_path) == []


def test_mask_writer_names_frames_after_folder_frames(tmp_path: Path) -> None:
    out_dir = tmp_path / "masks"
    with PaletteMaskWriter(out_dir, frame_names=["frame_a", "frame_b"]) as writer:
        writer.write(1, np.ones((4, 4), np.uint8))
        with pytest.raises(FrameIndexError, match="valid indices are 0 to 1"):
            writer.write(2, np.ones((4, 4), np.uint8))
    assert [p.name for p in out_dir.iterdir()] == ["frame_b.png"]


def test_mask_writer_exception_leaves_nothing(tmp_path: Path) -> None:
    out_dir = tmp_path / "masks"
    with pytest.raises(Boom), PaletteMaskWriter(out_dir) as writer:
        writer.write(0, np.ones((4, 4), np.uint8))
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_mask_writer_replaces_old_masks_only_when_complete(tmp_path: Path) -> None:
    out_dir = tmp_path / "masks"
    out_dir.mkdir()
    write_palette_png(out_dir / "00000.png", np.full((4, 4), 7, np.uint8))
    write_palette_png(out_dir / "00099.png", np.full((4, 4), 7, np.uint8))
    with pytest.raises(Boom), PaletteMaskWriter(out_dir) as writer:
        writer.write(0, np.ones((4, 4), np.uint8))
        raise Boom
    assert sorted(p.name for p in out_dir.iterdir()) == ["00000.png", "00099.png"]  # untouched
    with PaletteMaskWriter(out_dir) as writer:
        writer.write(0, np.ones((4, 4), np.uint8))
    assert [p.name for p in out_dir.iterdir()] == ["00000.png"]  # replaced as a whole
    assert np.asarray(Image.open(out_dir / "00000.png")).max() == 1
    assert leftovers(tmp_path) == []


def test_mask_writer_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    out_dir = tmp_path / "photos"
    out_dir.mkdir()
    (out_dir / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(OutputError, match="choose an empty or new folder"):
        PaletteMaskWriter(out_dir)
    assert [p.name for p in out_dir.iterdir()] == ["holiday.jpg"]
    assert leftovers(tmp_path) == []
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputError, match="it is a file"):
        PaletteMaskWriter(tmp_path / "a_file")


def test_forgotten_writer_cleans_up_after_itself(tmp_path: Path) -> None:
    writer = PaletteMaskWriter(tmp_path / "masks")
    writer.write(0, np.ones((4, 4), np.uint8))
    assert len(leftovers(tmp_path)) == 1
    del writer  # never closed: the temporary folder goes with it
    assert leftovers(tmp_path) == [] and not (tmp_path / "masks").exists()


# -- COCO RLE ----------------------------------------------------------------------------------


def test_coco_rle_round_trip_with_absent_objects(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    height, width, num_frames = 60, 80, 6
    info = VideoInfo(width=width, height=height, num_frames=num_frames, fps=24.0, name="clip")
    written: dict[int, dict[int, np.ndarray]] = {}
    path = tmp_path / "masks.json"
    with CocoRleWriter(path, info) as writer:
        for frame_index in reversed(range(num_frames)):  # any order
            blobs = blob_masks(rng, height, width, 3)
            masks = {1: blobs[0], 2: blobs[1], 7: blobs[2]}
            if frame_index % 2:
                masks[2] = np.zeros((height, width), bool)  # object 2 absent on odd frames
            writer.write(frame_index, masks, {1: 0.9, 2: 0.2 if frame_index % 2 else 0.8, 7: 1.0})
            written[frame_index] = {k: m for k, m in masks.items() if m.any()}
        assert not path.exists()

    read = read_coco_masks(path)
    assert sorted(read) == list(range(num_frames))
    for frame_index, masks in written.items():
        assert sorted(read[frame_index]) == sorted(masks)
        for obj_id, mask in masks.items():
            np.testing.assert_array_equal(read[frame_index][obj_id], mask)

    document = json.loads(path.read_text())
    assert document["videos"] == [
        {"id": 1, "name": "clip", "width": 80, "height": 60, "length": 6, "fps": 24.0}
    ]
    assert document["categories"] == [{"id": 1, "name": "object"}]
    assert [image["frame_index"] for image in document["images"]] == list(range(num_frames))
    annotations = document["annotations"]
    assert len(annotations) == 3 * 3 + 3 * 2
    assert len({a["id"] for a in annotations}) == len(annotations)
    first = annotations[0]
    assert first["frame_index"] == 0 and first["object_id"] == 1 and first["score"] == 0.9
    assert isinstance(first["segmentation"]["counts"], str)
    assert first["segmentation"]["size"] == [60, 80]
    assert first["area"] == int(written[0][1].sum())
    ys, xs = np.nonzero(written[0][1])
    assert first["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert first["iscrowd"] == 0 and first["category_id"] == 1
    np.testing.assert_array_equal(decode_rle(first["segmentation"]), written[0][1])
    assert leftovers(tmp_path) == []


def test_coco_writer_exception_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "masks.json"
    path.write_text("previous results")
    info = VideoInfo(width=4, height=4, num_frames=2, fps=24.0)
    with pytest.raises(Boom), CocoRleWriter(path, info) as writer:
        writer.write(0, {1: np.ones((4, 4), bool)})
        raise Boom
    assert path.read_text() == "previous results"
    assert leftovers(tmp_path) == []
    with CocoRleWriter(path, info) as writer:
        with pytest.raises(ValueError, match="is \\(3, 4\\)"):
            writer.write(0, {1: np.ones((3, 4), bool)})
        with pytest.raises(FrameIndexError):
            writer.write(2, {1: np.ones((4, 4), bool)})
    assert json.loads(path.read_text())["annotations"] == []


# -- overlays ----------------------------------------------------------------------------------


def test_render_overlay_tints_and_outlines_objects() -> None:
    frame = np.full((60, 80, 3), 200, np.uint8)
    labels = np.zeros((60, 80), np.uint8)
    labels[10:40, 10:40] = 1
    labels[20:50, 50:75] = 3
    before = frame.copy()
    shown = render_overlay(frame, labels)
    np.testing.assert_array_equal(frame, before)  # pure: the input is untouched
    assert shown[55, 5].tolist() == [200, 200, 200]  # background
    assert shown[25, 25].tolist() == [164, 100, 100]  # half (128, 0, 0), half grey
    assert shown[35, 60].tolist() == [164, 164, 100]  # object 3 is (128, 128, 0)
    outline = shown[10, 25].astype(int)  # on the object's edge: its colour, anti-aliased
    assert np.abs(outline - object_color(1)).max() < 16, outline


@pytest.mark.parametrize(("width", "height"), [(80, 60), (81, 61)])
def test_overlay_video_decodes_with_object_colours(tmp_path: Path, width: int, height: int) -> None:
    path = tmp_path / "overlay.mp4"
    num_frames = 12
    frame = np.full((height, width, 3), 90, np.uint8)
    with OverlayVideoWriter(path, fps=29.97, width=width, height=height) as writer:
        for index in range(num_frames):
            labels = np.zeros((height, width), np.uint8)
            labels[10:50, 5 + index : 35 + index] = 2  # object 2 moves right
            writer.write(frame, labels)
        assert not path.exists()
    assert leftovers(tmp_path) == []

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert float(stream.average_rate) == pytest.approx(29.97, abs=0.01)
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == num_frames
    assert decoded[0].shape == (height + height % 2, width + width % 2, 3)
    expected_inside = 0.5 * np.array([90, 90, 90]) + 0.5 * np.array(object_color(2))
    for index in (0, num_frames - 1):
        inside = decoded[index][25:35, 15 + index : 25 + index].reshape(-1, 3).mean(axis=0)
        assert np.abs(inside - expected_inside).max() < 8, inside
        outside = decoded[index][52:, 50:].reshape(-1, 3).mean(axis=0)
        assert np.abs(outside - 90).max() < 8, outside


def test_overlay_writer_exception_and_empty_video_leave_nothing(tmp_path: Path) -> None:
    path = tmp_path / "overlay.mp4"
    frame, labels = np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), np.uint8)
    with pytest.raises(Boom), OverlayVideoWriter(path, 24, 16, 16) as writer:
        writer.write(frame, labels)
        raise Boom
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="no frames"), OverlayVideoWriter(path, 24, 16, 16):
        pass
    assert list(tmp_path.iterdir()) == []
    with OverlayVideoWriter(path, 24, 16, 16) as writer:
        with pytest.raises(ValueError, match="opened for"):
            writer.write(np.zeros((8, 16, 3), np.uint8), np.zeros((8, 16), np.uint8))
        writer.write(frame, labels)
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.mp4"]
