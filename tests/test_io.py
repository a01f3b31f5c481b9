"""Tests of vidseg.io: frames from video files, frame folders and arrays, and errors on bad input.

The test videos are made with PyAV; each frame shows its own index as an 8-bit binary code
(eight bright or dark blocks), so a test can tell which frame it was given.
"""

from __future__ import annotations

import random
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from vidseg.errors import FrameIndexError, VideoReadError
from vidseg.io import FrameSource, VideoInfo, open_frames
from vidseg.io.video_file import VideoFileSource

WIDTH, HEIGHT, NUM_FRAMES, FPS = 64, 48, 60, 25
BEAR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "davis2016" / "videos"


def make_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A frame whose top half spells ``index`` in binary and whose bottom-left corner is red."""
    frame = np.full((height, width, 3), 60, dtype=np.uint8)
    block = width // 8
    for bit in range(8):
        if (index >> bit) & 1:
            frame[: height // 2, bit * block : (bit + 1) * block] = 255
    frame[height // 2 :, :block] = (255, 0, 0)
    return frame


def frame_number(frame: np.ndarray) -> int:
    """Read back the index that :func:`make_frame` drew (robust to compression noise)."""
    height, width = frame.shape[:2]
    block = width // 8
    y = height // 4
    bits = [
        frame[y - 2 : y + 3, b * block + 2 : (b + 1) * block - 2].mean() > 157 for b in range(8)
    ]
    return sum(int(bit) << position for position, bit in enumerate(bits))


def has_encoder(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        return False
    return True


def write_video(
    path: Path,
    codec: str,
    *,
    num_frames: int = NUM_FRAMES,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    pix_fmt: str = "yuv420p",
    rotation: float | None = None,
) -> Path:
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pix_fmt
        stream.options = options or {}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(make_frame(index), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


# keyint 10 and B-frames: frames come out of order and random access must seek between GOPs.
H264 = {"g": "10", "bf": "2", "crf": "16", "preset": "ultrafast"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def h264_mp4(videos: Path) -> Path:
    return write_video(videos / "clip.mp4", "libx264", options=H264)


OTHER_FORMATS = [
    ("clip.mkv", "libvpx-vp9", {"g": "12", "deadline": "realtime", "cpu-used": "8", "crf": "20"}),
    ("clip.webm", "libvpx", {"g": "12", "deadline": "realtime", "cpu-used": "8", "b": "2M"}),
    ("clip.avi", "mjpeg", {"q:v": "2"}),
    ("clip.mov", "mpeg4", {"g": "12", "bf": "2", "qscale": "2"}),
    # AVI stores no presentation timestamps: with B-frames FFmpeg's guesses are out of order,
    # and frames must be numbered by counting instead.
    ("bframes.avi", "libx264", H264),
    ("clip.ts", "libx264", H264),
]


# -- video files -------------------------------------------------------------------------------


def test_mp4_info(h264_mp4: Path) -> None:
    with open_frames(h264_mp4) as source:
        assert isinstance(source, FrameSource)
        assert source.info == VideoInfo(
            width=WIDTH, height=HEIGHT, num_frames=NUM_FRAMES, fps=25.0, name="clip"
        )
        assert len(source) == NUM_FRAMES


def test_mp4_sequential_reading_keeps_the_decoder_running(h264_mp4: Path) -> None:
    with VideoFileSource(h264_mp4) as source:
        seeks = count_seeks(source)
        frames = list(source)
        assert [frame_number(f) for f in frames] == list(range(NUM_FRAMES))
        assert all(f.dtype == np.uint8 and f.shape == (HEIGHT, WIDTH, 3) for f in frames)
        assert np.abs(frames[7][-1, 0].astype(int) - (255, 0, 0)).max() < 40  # RGB, not BGR
        # source[i] then source[i + 1] also decodes on, without seeking.
        assert frame_number(source[20]) == 20
        seeks_before = len(seeks)
        for index in range(21, 40):
            assert frame_number(source[index]) == index
        assert len(seeks) == seeks_before
    assert len(seeks) == 1  # one seek, to go back to frame 20; none while iterating


def test_mp4_random_access(h264_mp4: Path) -> None:
    order = list(range(NUM_FRAMES)) * 2
    random.Random(0).shuffle(order)
    with open_frames(h264_mp4) as source:
        for index in order:
            assert frame_number(source[index]) == index
        assert frame_number(source[-1]) == NUM_FRAMES - 1


def test_reverse_reading_is_not_quadratic_and_memory_stays_bounded(videos: Path) -> None:
    path = write_video(videos / "long_gop.mp4", "libx264", options={**H264, "g": "30"})
    with VideoFileSource(path, cache_frames=8) as source:
        decoded = count_decoded_frames(source)
        for index in reversed(range(NUM_FRAMES)):
            assert frame_number(source[index]) == index
            assert len(source._cache) <= 8
    # Decoding from the keyframe for every frame would take ~900 decodes; chunks of 8 from
    # keyframes 30 frames apart take a couple of hundred.
    assert len(decoded) < 300


@pytest.mark.parametrize(("name", "codec", "options"), OTHER_FORMATS)
def test_other_containers_and_codecs(
    videos: Path, name: str, codec: str, options: dict[str, str]
) -> None:
    if not has_encoder(codec):
        pytest.skip(f"this PyAV build has no {codec} encoder")
    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    path = write_video(videos / name, codec, options=options, pix_fmt=pix_fmt)
    order = list(range(NUM_FRAMES))
    random.Random(1).shuffle(order)
    with open_frames(path) as source:
        assert (source.info.num_frames, source.info.width, source.info.height) == (60, 64, 48)
        assert source.info.fps == pytest.approx(FPS)
        assert [frame_number(f) for f in source] == list(range(NUM_FRAMES))
        for index in order + list(reversed(range(NUM_FRAMES))):
            assert frame_number(source[index]) == index


def test_rotated_video_comes_out_upright(videos: Path) -> None:
    # A phone held upright records landscape pixels plus "rotate 90° clockwise to display",
    # which FFmpeg's display matrix states as -90° (counterclockwise).
    path = write_video(videos / "portrait.mp4", "libx264", options=H264, rotation=-90)
    with open_frames(path) as source:
        assert source.info.rotation == 90
        assert (source.info.width, source.info.height) == (HEIGHT, WIDTH)
        for index in (0, 13, 59):
            frame = source[index]
            assert frame.shape == (WIDTH, HEIGHT, 3)
            expected = np.rot90(make_frame(index), k=-1)
            assert np.abs(frame.astype(int) - expected).mean() < 8
            assert frame_number(np.rot90(frame, k=1)) == index


def test_real_clip_bear() -> None:
    path = BEAR / "bear.mp4"
    if not path.exists():
        pytest.skip(f"{path} is not available")
    with open_frames(path) as source:
        assert source.info.num_frames == 82
        frame = source[40]
        assert frame.shape == (source.info.height, source.info.width, 3)
        assert frame.std() > 10  # a real picture, not a blank


def test_returned_frames_are_copies(h264_mp4: Path) -> None:
    with open_frames(h264_mp4) as source:
        source[5][:] = 0
        assert frame_number(source[5]) == 5


# -- bad video files ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideoReadError, match=r"cannot read video '.*x\.mp4': file does not exist"):
        open_frames(tmp_path / "x.mp4")


def test_text_file_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("hello, this is not a video\n" * 20)
    with pytest.raises(VideoReadError, match=r"'.*x\.txt' is not a video FFmpeg can decode"):
        open_frames(path)


def test_mp4_cut_before_its_index_cannot_be_opened(h264_mp4: Path, tmp_path: Path) -> None:
    # By default the mp4 index (moov) is written at the end, so the first half has none.
    data = h264_mp4.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError, match="truncated"):
        open_frames(cut)


def test_mp4_cut_in_half_counts_only_decodable_frames(tmp_path: Path) -> None:
    # With the index first ("faststart"), half a file still opens: the header lists 60 frames
    # but only the first part can be decoded, and that is what the source reports.
    full = write_video(
        tmp_path / "full.mp4",
        "libx264",
        options=H264,
        container_options={"movflags": "faststart"},
    )
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with open_frames(cut) as source:
        assert 0 < len(source) < NUM_FRAMES
        for index in reversed(range(len(source))):
            assert frame_number(source[index]) == index
        with pytest.raises(FrameIndexError):
            source[len(source)]


def test_undecodable_frame_raises_rather_than_returning_another(videos: Path) -> None:
    # Remux an MJPEG avi with frame 25's JPEG data replaced by zeros.
    original = write_video(videos / "intra.avi", "mjpeg", pix_fmt="yuvj420p")
    damaged = videos / "damaged.avi"
    with av.open(str(original)) as source, av.open(str(damaged), "w") as target:
        in_stream = source.streams.video[0]
        out_stream = target.add_stream_from_template(in_stream)
        for position, packet in enumerate(p for p in source.demux(in_stream) if p.size):
            if position == 25:
                garbage = av.Packet(b"\xff\xd8" + bytes(packet.size - 2))
                garbage.pts, garbage.dts = packet.pts, packet.dts
                garbage.time_base, garbage.is_keyframe = packet.time_base, True
                packet = garbage
            packet.stream = out_stream
            target.mux(packet)
    with open_frames(damaged) as video:
        assert len(video) == NUM_FRAMES
        assert frame_number(video[24]) == 24
        with pytest.raises(VideoReadError, match="cannot decode frame 25 of"):
            video[25]
        assert frame_number(video[26]) == 26


def test_index_past_the_end(h264_mp4: Path) -> None:
    with open_frames(h264_mp4) as source:
        with pytest.raises(FrameIndexError, match=r"valid indices are 0 to 59"):
            source[60]
        with pytest.raises(IndexError):  # FrameIndexError is an IndexError too
            source[-61]
        with pytest.raises(TypeError):
            source[1.5]  # type: ignore[index]


def test_closed_source_refuses_reads(h264_mp4: Path) -> None:
    with open_frames(h264_mp4) as source:
        pass
    with pytest.raises(ValueError, match="closed"):
        source[0]
    source.close()  # closing twice is harmless


# -- frame folders -----------------------------------------------------------------------------


def test_frame_folder_natural_order_and_conversions(tmp_path: Path) -> None:
    names = ["10.png", "2.JPG", "1.jpeg", "0.png", "11.png"]
    for index, name in enumerate(sorted(names, key=lambda n: int(n.split(".")[0]))):
        rgb = make_frame(index)
        if name == "0.png":
            cv2.imwrite(str(tmp_path / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        elif name == "11.png":
            rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
            cv2.imwrite(str(tmp_path / name), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
        else:
            cv2.imwrite(str(tmp_path / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.png").write_bytes(b"ignored too")
    with open_frames(tmp_path) as source:
        assert source.info.frame_names == ("0", "1", "2", "10", "11")
        assert (source.info.width, source.info.height, source.info.fps) == (64, 48, 24.0)
        assert source.info.num_frames == 5
        for index in reversed(range(5)):
            frame = source[index]
            assert frame.shape == (HEIGHT, WIDTH, 3) and frame.dtype == np.uint8
            assert frame_number(frame) == index
        assert np.abs(source[4][-1, 0].astype(int) - (255, 0, 0)).max() < 3  # RGBA -> RGB
    assert open_frames(tmp_path, fps=30).info.fps == 30.0


def test_frame_folder_size_mismatch_names_the_file(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "00000.png"), make_frame(0))
    cv2.imwrite(str(tmp_path / "00001.png"), make_frame(1, width=32))
    source = open_frames(tmp_path)  # sizes are checked lazily, not on opening
    with pytest.raises(VideoReadError, match=r"00001\.png' is 32x48 .* is 64x48"):
        source[1]


def test_frame_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(VideoReadError, match="is empty"):
        open_frames(tmp_path)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(VideoReadError, match=r"holds no \.jpg, \.jpeg or \.png images"):
        open_frames(tmp_path)
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(VideoReadError, match=r"cannot read frame image '.*b\.png'"):
        open_frames(tmp_path)


def test_frame_folder_refuses_two_frames_with_one_name(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "1.png"), make_frame(0))
    cv2.imwrite(str(tmp_path / "1.jpg"), make_frame(0))
    with pytest.raises(VideoReadError, match="each frame name must appear once"):
        open_frames(tmp_path)


# -- arrays ------------------------------------------------------------------------------------


def test_rgb_grey_and_list_arrays() -> None:
    rgb = np.stack([make_frame(i) for i in range(6)])
    with open_frames(rgb, fps=10) as source:
        assert source.info == VideoInfo(width=64, height=48, num_frames=6, fps=10.0)
        assert [frame_number(f) for f in source] == list(range(6))
        source[2][:] = 0
        assert frame_number(rgb[2]) == 2  # the caller's array is not changed through a frame
    grey = rgb[..., 1]
    with open_frames(grey) as source:
        assert source[3].shape == (48, 64, 3)
        assert (source[3] == grey[3][..., None]).all()
    with open_frames(list(rgb)) as source:
        assert len(source) == 6 and frame_number(source[5]) == 5


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((0, 4, 4, 3), np.uint8), "no frames"),
        (np.zeros((2, 4, 4, 3), np.float32), "must be uint8"),
        (np.zeros((2, 4, 4, 2), np.uint8), "2 colour channels"),
        (np.zeros((4, 4), np.uint8), "shape"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)], "same size"),
        ([], "no frames"),
    ],
)
def test_bad_arrays(frames: np.ndarray | list[np.ndarray], message: str) -> None:
    with pytest.raises(VideoReadError, match=message):
        open_frames(frames)


def test_open_frames_passes_an_open_source_through() -> None:
    source = open_frames(np.zeros((2, 4, 4, 3), np.uint8))
    assert open_frames(source) is source
    with pytest.raises(VideoReadError, match="cannot read a video from a int"):
        open_frames(3)  # type: ignore[arg-type]


# -- helpers that watch the decoder ------------------------------------------------------------


def count_seeks(source: VideoFileSource) -> list[int]:
    """Record the keyframe index of every seek that ``source`` makes from now on."""
    seeks: list[int] = []
    seek = source._seek

    def recording_seek(keyframe_index: int) -> None:
        seeks.append(keyframe_index)
        seek(keyframe_index)

    source._seek = recording_seek  # type: ignore[method-assign]
    return seeks


def count_decoded_frames(source: VideoFileSource) -> list[int]:
    """Record the index of every frame that ``source`` decodes after its next seek."""
    decoded: list[int] = []
    decoded_frames = source._decoded_frames

    def recording_decoded_frames():  # type: ignore[no-untyped-def]
        for frame_index, frame in decoded_frames():
            decoded.append(frame_index)
            yield frame_index, frame

    source._decoded_frames = recording_decoded_frames  # type: ignore[method-assign]
    return decoded
