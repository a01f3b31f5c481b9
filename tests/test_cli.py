"""Tests of the ``vidseg`` command: track, eval, info, demo, and its errors.

The CLI runs in-process through ``main([...])`` (plus one subprocess run of the installed
entry point) on small synthetic videos, with the real built-in engine.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vidseg import __version__
from vidseg.cli.main import main
from vidseg.cli.prompts import PromptSpec, UsageError, mask_objects, parse_prompt, read_label_png
from vidseg.demo.synthetic import render_synthetic_video, write_mp4
from vidseg.evaluation import evaluate_directories
from vidseg.outputs import read_coco_masks, write_palette_png

WIDTH, HEIGHT, NUM_FRAMES = 160, 96, 12
SHORT = 6


def run_cli(*args: str | Path) -> tuple[int, str, str]:
    """Run ``vidseg ARGS`` in this process; return (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.asarray(image)


def bounding_box(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    return f"{xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1}"


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory):
    """A 12-frame 160x96 synthetic clip with two objects, written as mp4."""
    folder = tmp_path_factory.mktemp("clip")
    video = render_synthetic_video(
        num_frames=NUM_FRAMES, width=WIDTH, height=HEIGHT, num_objects=2, seed=3
    )
    path = write_mp4(folder / "clip.mp4", video.frames, video.fps)
    return video, path


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory):
    """The first 6 frames of a 24-frame scene, as mp4: for tests that need less tracking."""
    folder = tmp_path_factory.mktemp("short")
    video = render_synthetic_video(num_frames=24, width=WIDTH, height=HEIGHT, num_objects=2)
    frames, labels = video.frames[:SHORT], video.labels[:SHORT]
    return frames, labels, write_mp4(folder / "short.mp4", frames, video.fps)


@pytest.fixture(scope="module")
def tracked(clip, tmp_path_factory: pytest.TempPathFactory):
    """``vidseg track`` with a mask prompt (object 1) and a box prompt (object 2)."""
    video, path = clip
    folder = tmp_path_factory.mktemp("tracked")
    mask_png = folder / "first.png"
    Image.fromarray((video.labels[0] == 1).astype(np.uint8) * 255).save(mask_png)
    out, coco, overlay = folder / "masks", folder / "masks.json", folder / "overlay.mp4"
    result = run_cli(
        "track", path, "--mask", mask_png,
        "--obj", "2", "--box", bounding_box(video.labels[0] == 2),
        "--out", out, "--coco", coco, "--overlay", overlay, "--timings",
    )  # fmt: skip
    return result, out, coco, overlay


# -- track ----------------------------------------------------------------------------------


def test_track_writes_palette_pngs_named_by_index(tracked) -> None:
    (code, stdout, stderr), out, _, _ = tracked
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(NUM_FRAMES)]
    values = set()
    for path in out.iterdir():
        labels = read_png(path)
        assert labels.shape == (HEIGHT, WIDTH)
        values |= set(np.unique(labels).tolist())
    assert values <= {0, 1, 2}
    assert set(np.unique(read_png(out / "00000.png")).tolist()) == {0, 1, 2}
    # One summary line: frames, objects, seconds, fps, where the outputs went.
    (line,) = stdout.strip().splitlines()
    assert "2 objects" in line and f"{NUM_FRAMES} frames" in line and "fps" in line
    assert str(out) in line
    # --timings goes to stderr, stage by stage.
    for stage in ("load engine", "decode", "engine", "write", "total"):
        assert stage in stderr
    # ... and the engine's own stages beneath it, indented.
    for stage in ("encoder", "read-out", "decoder"):
        assert f"    {stage}" in stderr
    assert "1: mask@0" in stderr and "2: box@0" in stderr


def test_track_mask_prompt_is_kept_on_its_frame(clip, tracked) -> None:
    video, _ = clip
    (code, _, _), out, _, _ = tracked
    assert code == 0
    first = read_png(out / "00000.png")
    assert ((first == 1) == (video.labels[0] == 1)).all()
    box_iou = ((first == 2) & (video.labels[0] == 2)).sum() / (
        (first == 2) | (video.labels[0] == 2)
    ).sum()
    assert box_iou > 0.5


def test_track_coco_matches_the_pngs(tracked) -> None:
    (code, _, _), out, coco, _ = tracked
    assert code == 0
    masks = read_coco_masks(coco)
    assert sorted(masks) == list(range(NUM_FRAMES))
    for frame_index, objects in masks.items():
        labels = read_png(out / f"{frame_index:05d}.png")
        present = {int(v) for v in np.unique(labels) if v}
        assert set(objects) == present
        for obj_id, mask in objects.items():
            assert (mask == (labels == obj_id)).all()
    data = json.loads(coco.read_text())
    assert data["videos"][0]["width"] == WIDTH and data["videos"][0]["length"] == NUM_FRAMES


def test_track_overlay_has_every_frame(tracked) -> None:
    (code, _, _), _, _, overlay = tracked
    assert code == 0
    with av.open(str(overlay)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (WIDTH, HEIGHT)
        assert sum(1 for _ in container.decode(stream)) == NUM_FRAMES


def test_track_leaves_no_temporaries(tracked) -> None:
    (code, _, _), out, _, _ = tracked
    assert code == 0
    assert hidden_leftovers(out.parent) == []


def test_track_backward_from_the_last_frame(short_clip, tmp_path: Path) -> None:
    frames, labels, path = short_clip
    last = SHORT - 1
    mask_png = tmp_path / "last.png"
    write_palette_png(mask_png, labels[last])  # palette PNG: values 1, 2 are the ids
    out, overlay = tmp_path / "masks", tmp_path / "overlay.mp4"
    code, stdout, stderr = run_cli(
        "track", path, "--mask", f"{mask_png}@{last}", "--direction", "backward",
        "--out", out, "--overlay", overlay, "--quiet",
    )  # fmt: skip
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(SHORT)]
    assert (read_png(out / f"{last:05d}.png") == labels[last]).all()
    assert "2 objects" in stdout and f"{SHORT} frames" in stdout
    with av.open(str(overlay)) as container:
        assert sum(1 for _ in container.decode(video=0)) == SHORT


def test_track_forward_streams_the_overlay(short_clip, tmp_path: Path) -> None:
    _, labels, path = short_clip
    box = bounding_box(labels[0] == 2)
    x1, y1 = (int(v) for v in box.split(",")[:2])
    out, overlay = tmp_path / "masks", tmp_path / "overlay.mp4"
    code, stdout, stderr = run_cli(
        "track", path, "--obj", "2", "--box", box, "--neg", f"{x1},{y1}",
        "--direction", "forward", "--out", out, "--overlay", overlay,
    )  # fmt: skip
    assert code == 0, stderr
    assert len(list(out.iterdir())) == SHORT and "1 object over" in stdout
    assert set(np.unique(read_png(out / "00000.png")).tolist()) == {0, 2}
    with av.open(str(overlay)) as container:
        assert sum(1 for _ in container.decode(video=0)) == SHORT


def test_track_frame_folder_names_masks_after_frames(clip, tmp_path: Path) -> None:
    video, _ = clip
    frames = tmp_path / "frames"
    frames.mkdir()
    stems = [f"shot_{5 * (i + 1)}" for i in range(4)]  # natural order: shot_5 .. shot_20
    for stem, frame in zip(stems, video.frames[:4], strict=True):
        Image.fromarray(frame).save(frames / f"{stem}.png")
    ys, xs = np.nonzero(video.labels[2] == 1)
    point = f"{int(np.median(xs))},{int(np.median(ys))}@2"
    out, coco = tmp_path / "masks", tmp_path / "masks.json"
    code, _, stderr = run_cli("track", frames, "--point", point, "--out", out, "--coco", coco)
    assert code == 0, stderr
    assert sorted(p.stem for p in out.iterdir()) == sorted(stems)
    assert read_png(out / f"{stems[2]}.png").max() == 1
    data = json.loads(coco.read_text())
    assert [image["file_name"] for image in data["images"]] == stems


def test_track_interrupted_leaves_nothing(short_clip, tmp_path: Path, monkeypatch) -> None:
    from vidseg.session import TrackingSession

    _, labels, path = short_clip
    real_propagate = TrackingSession.propagate

    def interrupted(self, *args, **kwargs):
        for count, result in enumerate(real_propagate(self, *args, **kwargs)):
            if count == 2:
                raise KeyboardInterrupt
            yield result

    monkeypatch.setattr(TrackingSession, "propagate", interrupted)
    out, coco, overlay = tmp_path / "masks", tmp_path / "m.json", tmp_path / "o.mp4"
    code, stdout, stderr = run_cli(
        "track", path, "--box", bounding_box(labels[0] == 1),
        "--out", out, "--coco", coco, "--overlay", overlay,
    )  # fmt: skip
    assert code == 130
    assert stderr.strip().splitlines() == ["vidseg: error: interrupted; unfinished outputs "
                                           "were discarded"]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- errors ---------------------------------------------------------------------------------


def bad_input_cases(video, path: Path, folder: Path) -> dict[str, tuple[list, str, int]]:
    """name -> (arguments after the video, words the message must hold, exit status)."""
    text = folder / "notes.txt"
    text.write_text("this is not a video\n" * 20)
    truncated = folder / "truncated.mp4"
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    small = folder / "small.png"
    Image.fromarray(np.full((HEIGHT // 2, WIDTH // 2), 255, np.uint8)).save(small)
    empty = folder / "empty.png"
    Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint8)).save(empty)
    busy = folder / "busy"
    busy.mkdir()
    (busy / "notes.md").write_text("keep me")
    typo = folder / "typo.toml"
    typo.write_text('[prompts]\ndecodr = "learned"\n')
    loose = folder / "loose.toml"
    loose.write_text('decoder = "learned"\n')
    return {
        "text file": ([text, "--point", "5,5"], "not a video", 1),
        "truncated mp4": ([truncated, "--point", "5,5"], "truncated", 1),
        "wrong-size mask": ([path, "--mask", small], "80x48 but the video is 160x96", 1),
        "point outside": ([path, "--point", "500,20"], "--point '500,20'", 1),
        "frame past the end": ([path, "--point", "5,5@12"], "past the video", 1),
        "empty mask": ([path, "--mask", empty], "empty", 1),
        "missing mask": ([path, "--mask", folder / "nope.png"], "does not exist", 1),
        "malformed point": ([path, "--point", "3"], "--point '3': expected X,Y or X,Y@FRAME", 2),
        "malformed box": ([path, "--box", "1,2,3"], "expected X1,Y1,X2,Y2", 2),
        "bad object id": ([path, "--obj", "0", "--point", "5,5"], "--obj '0'", 2),
        "no prompt": ([path], "no prompt given", 2),
        "foreign files in --out": ([path, "--point", "40,40"], "other than masks", 1),
        "config typo": ([path, "--point", "5,5", "--config", typo], "['decodr'] in [prompts]", 1),
        "config outside a section": ([path, "--point", "5,5", "--config", loose], "section", 1),
        "missing config": ([path, "--point", "5,5", "--config", folder / "no.toml"], "read", 1),
    }


@pytest.fixture(scope="module")
def bad_inputs(clip, tmp_path_factory: pytest.TempPathFactory):
    video, path = clip
    folder = tmp_path_factory.mktemp("bad")
    return folder, bad_input_cases(video, path, folder)


@pytest.mark.parametrize(
    "case",
    [
        "text file",
        "truncated mp4",
        "wrong-size mask",
        "point outside",
        "frame past the end",
        "empty mask",
        "missing mask",
        "malformed point",
        "malformed box",
        "bad object id",
        "no prompt",
        "foreign files in --out",
        "config typo",
        "config outside a section",
        "missing config",
    ],
)
def test_track_bad_input(bad_inputs, case: str, tmp_path: Path) -> None:
    folder, cases = bad_inputs
    args, words, status = cases[case]
    video_arg, *options = args
    out = folder / "busy" if case == "foreign files in --out" else tmp_path / "masks"
    coco, overlay = tmp_path / "masks.json", tmp_path / "overlay.mp4"
    code, stdout, stderr = run_cli(
        "track", video_arg, *options, "--out", out, "--coco", coco, "--overlay", overlay
    )
    assert code == status != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("vidseg: error: ")
    assert words in lines[0]
    assert "Traceback" not in stderr and stdout == ""
    assert not coco.exists() and not overlay.exists()
    if case == "foreign files in --out":
        assert sorted(p.name for p in out.iterdir()) == ["notes.md"]
    else:
        assert not out.exists()
    assert hidden_leftovers(tmp_path) == [] and hidden_leftovers(folder) == []


def test_outputs_never_overwrite_the_input(clip, tmp_path: Path) -> None:
    video, path = clip
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        Image.fromarray(video.frames[i]).save(frames / f"{i}.png")
    code, _, stderr = run_cli("track", frames, "--point", "5,5", "--out", frames)
    assert code == 1 and "would overwrite the input" in stderr
    assert sorted(p.name for p in frames.iterdir()) == ["0.png", "1.png"]
    code, _, stderr = run_cli("track", path, "--point", "5,5", "--out", tmp_path / "m",
                              "--overlay", path)  # fmt: skip
    assert code == 1 and "--overlay" in stderr and path.stat().st_size > 0
    code, _, stderr = run_cli("track", path, "--point", "5,5", "--out", tmp_path / "m",
                              "--coco", tmp_path / "x", "--overlay", tmp_path / "x")  # fmt: skip
    assert code == 1 and "both name" in stderr
    assert not (tmp_path / "m").exists()


def test_start_past_the_end(clip, tmp_path: Path) -> None:
    _, path = clip
    code, _, stderr = run_cli(
        "track", path, "--point", "5,5", "--start", "40", "--out", tmp_path / "m"
    )
    assert code == 1 and "--start 40 is past the video" in stderr
    assert not (tmp_path / "m").exists()


def test_usage_errors_are_one_line(capsys) -> None:
    for args in (["bogus"], ["track"], ["info"], ["eval", "x"], []):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("vidseg: error: "), err


# -- prompt parsing -------------------------------------------------------------------------


def test_obj_applies_to_the_prompts_after_it() -> None:
    from vidseg.cli.main import build_parser

    args = build_parser().parse_args(
        ["track", "v.mp4", "--point", "1,2", "--obj", "2", "--point", "10,20",
         "--neg", "11,21@3", "--box", "1,2,30,40@5", "--obj", "7", "--mask", "a@b.png",
         "--mask", "m.png@4", "--out", "o"]
    )  # fmt: skip
    got = [(p.kind, p.obj_id, p.frame, p.values, p.path) for p in args.prompts]
    assert got == [
        ("point", 1, 0, (1.0, 2.0), None),
        ("point", 2, 0, (10.0, 20.0), None),
        ("neg", 2, 3, (11.0, 21.0), None),
        ("box", 2, 5, (1.0, 2.0, 30.0, 40.0), None),
        ("mask", 7, 0, (), Path("a@b.png")),
        ("mask", 7, 4, (), Path("m.png")),
    ]


@pytest.mark.parametrize(
    ("kind", "raw"),
    [("point", "3"), ("point", "1,2,3"), ("point", "a,b"), ("point", "1,2@x"),
     ("point", "1,2@-1"), ("neg", ""), ("box", "1,2,3,4@"), ("box", "1;2;3;4"), ("mask", "@3"),
     ("mask", "m.png@")],
)  # fmt: skip
def test_malformed_prompts_name_the_expected_form(kind: str, raw: str) -> None:
    with pytest.raises(UsageError, match=f"--{kind} '.*': expected "):
        parse_prompt(kind, raw)


def test_mask_images_give_object_ids(tmp_path: Path) -> None:
    labels = np.zeros((6, 8), np.uint8)
    labels[1:3, 1:3] = 4
    labels[3:5, 4:7] = 9
    write_palette_png(tmp_path / "palette.png", labels)
    Image.fromarray(np.stack([labels * 20, labels, labels], -1)).save(tmp_path / "rgb.png")
    Image.fromarray((labels > 0).astype(np.uint8) * 255).convert("LA").save(tmp_path / "la.png")

    def spec(obj_id: int = 1, explicit: bool = False) -> PromptSpec:
        return PromptSpec("mask", "m.png", obj_id, explicit, 0, path=Path("m.png"))

    palette = mask_objects(spec(), read_label_png(tmp_path / "palette.png"))
    assert sorted(palette) == [4, 9] and (palette[9] == (labels == 9)).all()
    rgb = read_label_png(tmp_path / "rgb.png")  # channel 0
    assert sorted(mask_objects(spec(), rgb)) == [80, 180]
    grey_alpha = read_label_png(tmp_path / "la.png")
    assert sorted(mask_objects(spec(), grey_alpha)) == [1]  # 0/255: one object, id 1
    assert sorted(mask_objects(spec(5, True), grey_alpha)) == [5]  # ... or the --obj id
    one_value = (labels == 4).astype(np.uint8) * 3
    assert sorted(mask_objects(spec(6, True), one_value)) == [6]
    assert sorted(mask_objects(spec(), one_value)) == [3]


# -- eval, info, version --------------------------------------------------------------------


def test_eval_ground_truth_against_itself(clip, tmp_path: Path) -> None:
    video, _ = clip
    truth = tmp_path / "truth"
    truth.mkdir()
    for i, labels in enumerate(video.labels):
        write_palette_png(truth / f"{i:05d}.png", labels)
    scores = tmp_path / "scores.json"
    code, stdout, stderr = run_cli("eval", truth, truth, "--json", scores)
    assert code == 0, stderr
    assert "J&F" in stdout and "J-Decay" in stdout and "F-Recall" in stdout
    assert "J&F 1.000 (100.0)" in stdout
    assert "| truth | 1 |" in stdout and "| truth | 2 |" in stdout
    data = json.loads(scores.read_text())
    assert data["mean"]["J&F"] == 1.0 and data["num_objects"] == 2


def test_eval_missing_predictions(tmp_path: Path) -> None:
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir()
    pred.mkdir()
    write_palette_png(truth / "00000.png", np.ones((4, 4), np.uint8))
    code, _, stderr = run_cli("eval", pred, truth)
    assert code == 1 and stderr.count("\n") == 1 and "missing prediction" in stderr


def test_info(clip) -> None:
    _, path = clip
    code, stdout, stderr = run_cli("info", path)
    assert code == 0, stderr
    assert f"{WIDTH}x{HEIGHT}" in stdout
    assert f"frames:       {NUM_FRAMES}" in stdout
    assert "fps:          24" in stdout and "h264" in stdout and "rotation" in stdout


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"vidseg {__version__}"


def test_installed_entry_point(clip, tmp_path: Path) -> None:
    executable = shutil.which("vidseg", path=str(Path(sys.executable).parent))
    assert executable is not None, "the vidseg console script is not installed"
    done = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == f"vidseg {__version__}"
    _, path = clip
    done = subprocess.run(
        [executable, "info", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and f"{WIDTH}x{HEIGHT}" in done.stdout
    done = subprocess.run(
        [executable, "track", str(tmp_path / "missing.mp4"), "--point", "1,1", "--out",
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"vidseg: error: cannot read video '{tmp_path / 'missing.mp4'}': file does not exist"
    ]
    assert not (tmp_path / "out").exists()


# -- demo -----------------------------------------------------------------------------------


def test_demo(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, stdout, stderr = run_cli(
        "demo", "--frames", "12", "--out", out, "--quiet", "--threads", "1"
    )
    assert code == 0, stderr
    for name in ("input.mp4", "masks", "masks.json", "overlay.mp4", "truth"):
        assert (out / name).exists(), name
    assert len(list((out / "masks").glob("*.png"))) == 12
    assert len(list((out / "truth").glob("*.png"))) == 12
    assert "mask@0" in stdout and "box@0" in stdout and "fps" in stdout
    report = evaluate_directories(out / "masks", out / "truth")
    assert report.jf > 0.5, stdout
    assert f"{report.jf:.3f}" in stdout


def test_config_file_sets_the_builtin_engine(tmp_path: Path) -> None:
    """``--config`` (``load_engine(config=...)``): a TOML file's settings over the defaults."""
    from vidseg.engines.builtin import BuiltinConfig, BuiltinEngine
    from vidseg.engines.loading import load_engine
    from vidseg.errors import ModelError

    config = tmp_path / "engine.toml"
    config.write_text('[prompts]\ndecoder = "grabcut"\n\n[presence]\nmin_object_match = 0.3\n')
    engine = load_engine(config=config)
    assert engine.config.prompts.decoder == "grabcut" and engine.prompt_decoder is None
    assert engine.config.presence.min_object_match == 0.3
    defaults = BuiltinConfig.load()
    assert engine.config.encoder == defaults.encoder and engine.config.memory == defaults.memory
    assert engine is not BuiltinEngine.shared()
    with pytest.raises(ModelError, match="--config sets the built-in engine"):
        load_engine("sam2.1-hiera-tiny", config=config)
    # A weights file named in the config is found beside it, wherever vidseg runs from.
    from vidseg.engines.builtin.network import tracker_weights_path

    (tmp_path / "run.pt").write_bytes(tracker_weights_path().read_bytes())
    config.write_text('[tracker]\nweights = "run.pt"\n')
    assert load_engine(config=config).config.tracker.weights == str(tmp_path / "run.pt")
