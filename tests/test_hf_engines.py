"""The transformers backends (SAM 2.1, EdgeTAM, SAM 3 tracker): processing that matches
transformers' own, the session semantics on every backend, bounded memory, the CLI, errors.

Nothing is downloaded: each family is a tiny random-weight checkpoint written with
``save_pretrained`` (config.json and model.safetensors only) and loaded by path.

What "matches transformers" means here, since transformers' processors for these models need
torchvision, which is not installed:

- frames: ``Sam2VideoVideoProcessor`` runs for real, with its two torchvision calls
  (``resize`` of a uint8 image, ``normalize``) replaced by a transcription of torchvision's
  code for them (``resize_image``: uint8 bilinear on an AVX2 CPU is ``interpolate`` on the
  uint8 tensor, else float, round, uint8);
- clicks, boxes and mask prompts: the processors' own ``process_new_points_or_boxes_...`` and
  ``process_new_mask_...`` methods write into a real inference session (no torchvision there);
- mask upsampling: ``Sam2ImageProcessor.post_process_masks`` itself, imported with a stand-in
  for the ``torchvision.ops`` module it imports but does not use there.
"""

from __future__ import annotations

import enum
import importlib
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vidseg.cli.main import main  # noqa: E402
from vidseg.demo.synthetic import render_synthetic_video  # noqa: E402
from vidseg.engines.hf import HFEngine, HFTracker, save_random_model  # noqa: E402
from vidseg.engines.hf import models as hf_models  # noqa: E402
from vidseg.engines.hf.processing import (  # noqa: E402
    HALF_MEAN,
    HALF_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    upsample_logits,
)
from vidseg.engines.loading import load_engine  # noqa: E402
from vidseg.errors import ModelError, PromptError  # noqa: E402
from vidseg.outputs import read_coco_masks  # noqa: E402
from vidseg.session import TrackingSession  # noqa: E402
from vidseg.session.prompts import ObjectPrompt  # noqa: E402

FAMILIES = ("sam2", "edgetam", "sam3")
WIDTH, HEIGHT, NUM_FRAMES = 96, 64, 8
CLICK = (30.0, 30.0)
BOX = (10.0, 10.0, 50.0, 40.0)


@pytest.fixture(scope="module")
def video():
    return render_synthetic_video(
        num_frames=NUM_FRAMES, width=WIDTH, height=HEIGHT, num_objects=2, seed=1
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, video) -> dict[str, Path]:
    """One tiny random checkpoint per family. Random weights segment at random, and an empty
    mask from a click is an error in the session: so each family takes the first seed whose
    model finds something for the test's click and box (the prompt plumbing is under test
    here, not the weights)."""
    root = tmp_path_factory.mktemp("checkpoints")
    found = {}
    for family in FAMILIES:
        for seed in range(10):
            folder = save_random_model(family, root / str(seed), seed=seed)
            engine = HFEngine.load(str(folder))
            frame = video.frames[2]
            click = ObjectPrompt(points=np.array([CLICK], np.float32), labels=np.array([1]))
            box = ObjectPrompt(box=np.array(BOX, np.float32))
            if (
                engine.mask_from_prompt(frame, click).any()
                and engine.mask_from_prompt(video.frames[5], box).any()
            ):
                found[family] = folder
                break
        else:
            pytest.fail(f"no seed in 0..9 gives a {family} model that segments the prompts")
    return found


@pytest.fixture(scope="module")
def engines(checkpoints) -> dict[str, object]:
    loaded = {family: HFEngine.load(str(folder)) for family, folder in checkpoints.items()}
    loaded["builtin"] = load_engine("builtin")
    return loaded


# -- processing matches transformers ----------------------------------------------------------


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"


def _torchvision_resize(image, size, interpolation=_InterpolationMode.BILINEAR, antialias=True):
    """torchvision.transforms.v2.functional.resize_image, its bilinear/bicubic branch."""
    shape = image.shape
    channels, height, width = shape[-3:]
    new_height, new_width = size
    if (new_height, new_width) == (height, width):
        return image
    dtype = image.dtype
    acceptable = [torch.float32, torch.float64]
    native_uint8 = interpolation == _InterpolationMode.BICUBIC or (
        "AVX2" in torch.backends.cpu.get_cpu_capability()
    )
    if image.device.type == "cpu" and native_uint8:
        acceptable.append(torch.uint8)
    image = image.reshape(-1, channels, height, width)
    need_cast = dtype not in acceptable
    if need_cast:
        image = image.to(torch.float32)
    image = torch.nn.functional.interpolate(
        image, size=[new_height, new_width], mode=interpolation.value, align_corners=False,
        antialias=antialias,
    )  # fmt: skip
    if need_cast:
        image = image.round_().to(dtype)
    return image.reshape(shape[:-3] + (channels, new_height, new_width))


def _torchvision_normalize(tensor, mean, std, inplace=False):
    """torchvision.transforms.v2.functional.normalize_image."""
    mean = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    tensor = tensor if inplace else tensor.clone()
    return tensor.sub_(mean).div_(std)


@pytest.fixture()
def video_processor_class(monkeypatch: pytest.MonkeyPatch):
    """transformers' Sam2VideoVideoProcessor, with torchvision's two functions it calls."""
    import transformers.image_processing_backends as backends
    import transformers.video_processing_utils as video_processing
    from transformers.image_utils import PILImageResampling
    from transformers.models.sam2_video.video_processing_sam2_video import (
        Sam2VideoVideoProcessor,
    )

    functional = types.SimpleNamespace(
        resize=_torchvision_resize,
        normalize=_torchvision_normalize,
        InterpolationMode=_InterpolationMode,
        grayscale_to_rgb=lambda image: image,
    )
    monkeypatch.setattr(video_processing, "tvF", functional, raising=False)
    monkeypatch.setattr(backends, "tvF", functional, raising=False)
    monkeypatch.setattr(
        backends,
        "pil_torch_interpolation_mapping",
        {PILImageResampling.BILINEAR: _InterpolationMode.BILINEAR},
    )
    return Sam2VideoVideoProcessor


# torchvision resizes uint8 natively only where torch dispatches to AVX2: check both branches
# on any runner, not just the one its CPU picks.
@pytest.mark.parametrize("cpu_capability", ["AVX2", "AVX512"])
@pytest.mark.parametrize(
    ("size", "mean", "std"),
    [
        (1024, IMAGENET_MEAN, IMAGENET_STD),
        (1008, HALF_MEAN, HALF_STD),
        (64, IMAGENET_MEAN, IMAGENET_STD),
    ],
)
def test_frames_are_processed_as_by_the_transformers_video_processor(
    video_processor_class, monkeypatch, cpu_capability: str, size: int, mean, std
) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: cpu_capability)
    frame = np.random.default_rng(size).integers(0, 256, (480, 854, 3), dtype=np.uint8)
    processor = video_processor_class(
        size={"height": size, "width": size}, image_mean=list(mean), image_std=list(std)
    )
    reference = processor(videos=[frame[None]], return_tensors="pt").pixel_values_videos[0][0]
    ours = Preprocessing(size, mean, std).frame_to_pixels(frame)
    assert ours.shape == reference.shape == (3, size, size)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def _processor(family: str, target_size: int):
    """transformers' video processor of a family, without its image and video processors
    (they need torchvision; the prompt methods do not use them)."""
    if family == "sam3":
        from transformers import Sam3TrackerVideoProcessor as processor_class
    else:
        from transformers import Sam2VideoProcessor as processor_class
    processor = processor_class.__new__(processor_class)
    processor.target_size = target_size
    processor.point_pad_value = -10
    return processor


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("with_box", [False, True])
def test_clicks_and_boxes_are_scaled_as_by_the_transformers_processor(
    engines, family: str, with_box: bool
) -> None:
    engine = engines[family]
    prep = engine.preprocessing
    height, width = 480, 854
    points = np.array([[12.5, 400.0], [853.0, 0.0], [300.25, 211.75]], np.float32)
    labels = np.array([1, 0, 1])
    box = np.array([10.0, 20.5, 700.0, 479.0], np.float32) if with_box else None
    session = engine.new_session(height, width)
    _processor(family, prep.image_size).process_new_points_or_boxes_for_video_frame(
        session,
        frame_idx=3,
        obj_ids=[7],
        input_points=[[points.tolist()]],
        input_labels=[[labels.tolist()]],
        input_boxes=[[box.tolist()]] if with_box else None,
    )
    reference = session.point_inputs_per_obj[session.obj_id_to_idx(7)][3]
    coords, point_labels = prep.prompt_points(points, labels, box, height, width)
    torch.testing.assert_close(coords, reference["point_coords"], rtol=0, atol=0)
    assert point_labels.tolist() == reference["point_labels"].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_prompts_are_resized_as_by_the_transformers_processor(engines, family) -> None:
    engine = engines[family]
    mask = np.zeros((480, 854), bool)
    mask[100:300, 200:611] = True
    mask[50:60, 5:9] = True  # a sliver that the resize thins out
    session = engine.new_session(480, 854)
    _processor(family, engine.preprocessing.image_size).process_new_mask_for_video_frame(
        session, frame_idx=0, obj_ids=[1], input_masks=mask
    )
    reference = session.mask_inputs_per_obj[0][0]
    torch.testing.assert_close(engine.preprocessing.mask_to_input(mask), reference, rtol=0, atol=0)


def test_logits_are_upsampled_as_by_the_transformers_image_processor(monkeypatch) -> None:
    def stand_in(name: str) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        return module

    for name in ("torchvision", "torchvision.ops", "torchvision.ops.boxes"):
        monkeypatch.setitem(sys.modules, name, stand_in(name))
    sys.modules["torchvision.ops.boxes"].batched_nms = None  # imported, unused for masks
    module_name = "transformers.models.sam2.image_processing_sam2"
    try:
        reference_module = importlib.import_module(module_name)
        logits = torch.randn(3, 1, 256, 256, generator=torch.Generator().manual_seed(0))
        reference = reference_module.Sam2ImageProcessor.post_process_masks(
            None, [logits.clone()], [(480, 854)], binarize=False
        )[0]
    finally:
        sys.modules.pop(module_name, None)
    torch.testing.assert_close(upsample_logits(logits, 480, 854), reference[:, 0], rtol=0, atol=0)


def test_a_checkpoint_is_config_and_weights_only(checkpoints) -> None:
    for folder in checkpoints.values():
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


# -- the session semantics on every backend ---------------------------------------------------

BACKENDS = ("builtin", *FAMILIES)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_tracks_clicks_boxes_and_masks_both_ways(engines, video, backend) -> None:
    session = TrackingSession(video.frames, engine=engines[backend])
    first_mask = video.labels[0] == 1
    session.add_mask(0, 3, first_mask)
    clicked = session.add_points(2, 1, [CLICK])
    boxed = session.add_box(5, 2, BOX)  # object 2 appears later
    assert clicked.shape == boxed.shape == (HEIGHT, WIDTH) and clicked.any() and boxed.any()
    results = list(session.propagate(start_frame=2, direction="both"))
    assert [r.frame_index for r in results] == [*range(2, NUM_FRAMES), 1, 0]
    for result in results:
        assert sorted(result.masks) == [1, 2, 3]
        assert all(m.shape == (HEIGHT, WIDTH) and m.dtype == bool for m in result.masks.values())
        assert all(0.0 <= result.scores[obj] <= 1.0 for obj in (1, 2, 3))
        overlap = sum(m.astype(int) for m in result.masks.values())
        assert overlap.max() <= 1  # one object per pixel
    by_frame = {r.frame_index: r for r in results}
    # Prompts win on their own frames, with full confidence.
    np.testing.assert_array_equal(by_frame[0].masks[3], first_mask)
    np.testing.assert_array_equal(by_frame[5].masks[2], boxed)
    assert by_frame[0].scores[3] == by_frame[5].scores[2] == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_correction_remove_and_reset(engines, video, backend) -> None:
    session = TrackingSession(video.frames, engine=engines[backend])
    session.add_mask(0, 1, video.labels[0] == 1)
    session.add_mask(0, 2, video.labels[0] == 2)
    results = list(session.propagate())
    tracked = results[4].masks[1]
    if not tracked.any():  # random weights may lose the object: correct from the truth
        session.add_mask(4, 1, video.labels[4] == 1)
        tracked = video.labels[4] == 1
    ys, xs = np.nonzero(tracked)
    # A negative click on the object's own mask: the engine refines the current mask (random
    # weights may refine it away, which the session refuses, keeping what it had).
    before = session.prompt(4, 1)
    try:
        corrected = session.add_points(4, 1, [[xs[0], ys[0]]], labels=[0])
    except PromptError as error:
        assert "gave an empty mask" in str(error)
        assert session.prompt(4, 1) is before
        corrected = session.mask(4, 1)
    assert corrected is not None and corrected.shape == (HEIGHT, WIDTH)
    results = {r.frame_index: r for r in session.propagate()}
    if session.prompt(4, 1) is not None:
        np.testing.assert_array_equal(results[4].masks[1], corrected)
    session.remove_object(2)
    assert session.object_ids == [1]
    assert all(sorted(r.masks) == [1] for r in session.propagate(max_frames=3))
    session.reset()
    with pytest.raises(PromptError):
        list(session.propagate())


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_prompts_match_the_transformers_processor_path(
    engines, video, video_processor_class, family
) -> None:
    """Click -> mask through vidseg and through transformers' processor path (its video
    processor, its prompt method, its post-processing) give the same mask."""
    engine = engines[family]
    frame = video.frames[2]
    prep = engine.preprocessing
    processor = _processor(family, prep.image_size)
    video_processor = video_processor_class(
        size={"height": prep.image_size, "width": prep.image_size},
        image_mean=list(prep.mean),
        image_std=list(prep.std),
    )
    session = engine.new_session(HEIGHT, WIDTH)
    pixels = video_processor(videos=[frame[None]], return_tensors="pt").pixel_values_videos[0]
    session.add_new_frame(pixels[0], 0)
    processor.process_new_points_or_boxes_for_video_frame(
        session, 0, [1], input_points=[[[list(CLICK)]]], input_labels=[[[1]]]
    )
    with torch.inference_mode():
        logits = engine.model(session, frame_idx=0).pred_masks
    reference = (
        torch.nn.functional.interpolate(
            logits.float(), (HEIGHT, WIDTH), mode="bilinear", align_corners=False
        )[0, 0]
        > 0
    )
    ours = engine.mask_from_prompt(
        frame, ObjectPrompt(points=np.array([CLICK], np.float32), labels=np.array([1]))
    )
    assert ours.any()
    np.testing.assert_array_equal(ours, reference.numpy())


# -- memory stays flat ------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_tracker_state_stays_bounded_on_a_long_video(engines, family) -> None:
    engine = engines[family]
    frames = np.random.default_rng(0).integers(0, 256, (60, 24, 32, 3), dtype=np.uint8)
    session = TrackingSession(frames, engine=engine)
    mask = np.zeros((24, 32), bool)
    mask[5:15, 8:20] = True
    session.add_mask(30, 1, mask)
    session.add_mask(40, 2, mask[::-1])
    trackers: list[HFTracker] = []
    new_tracker = engine.new_tracker

    def spy(info, *, reverse=False):
        trackers.append(new_tracker(info, reverse=reverse))
        return trackers[-1]

    engine.new_tracker = spy  # type: ignore[method-assign]
    try:
        for _ in session.propagate(direction="both"):
            for tracker in trackers[-1:]:
                state = tracker.session
                assert not state.processed_frames  # no frame pixels kept
                for outputs in state.output_dict_per_obj.values():
                    kept = outputs["non_cond_frame_outputs"]
                    assert len(kept) <= tracker._pointer_reach + 1
                    assert not any("high_res_masks" in o for o in kept.values())
                    with_memory = [t for t, o in kept.items() if "maskmem_features" in o]
                    assert len(with_memory) <= tracker._memory_reach + 1
                    assert sorted(outputs["cond_frame_outputs"]) in ([30], [40], [30, 40])
    finally:
        del engine.new_tracker
    assert len(trackers) == 2


# -- the command line -------------------------------------------------------------------------


def test_cli_tracks_with_a_checkpoint_folder_and_writes_every_output(
    checkpoints, video, tmp_path
) -> None:
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for index, frame in enumerate(video.frames):
        Image.fromarray(frame).save(frames_dir / f"{index:05d}.jpg", quality=95)
    out, coco = tmp_path / "masks", tmp_path / "masks.json"
    code = main(
        [
            "track", str(frames_dir), "--model", str(checkpoints["sam2"]), "--device", "cpu",
            "--obj", "1", "--point", f"{CLICK[0]:g},{CLICK[1]:g}@2",
            "--obj", "2", "--box", ",".join(f"{v:g}" for v in BOX) + "@5",
            "--out", str(out), "--coco", str(coco), "--overlay", str(tmp_path / "overlay.mp4"),
            "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(NUM_FRAMES)]
    masks = read_coco_masks(coco)
    assert len(masks) == NUM_FRAMES
    assert (tmp_path / "overlay.mp4").stat().st_size > 0


def test_cli_bad_model_is_one_line_and_exit_1(tmp_path, video, capsys) -> None:
    frames = tmp_path / "clip.npy"
    np.save(frames, video.frames)
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(video.frames[0]).save(folder / "0.png")
    code = main(["track", str(folder), "--point", "5,5", "--out", str(tmp_path / "o"),
                 "--model", "sam9"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "unknown model 'sam9'" in err and "sam2.1-hiera-tiny" in err and "edgetam" in err


# -- bad input --------------------------------------------------------------------------------


def test_folder_that_is_not_a_checkpoint(tmp_path, checkpoints) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        HFEngine.load(str(tmp_path))
    (tmp_path / "config.json").write_text((checkpoints["sam2"] / "config.json").read_text())
    with pytest.raises(ModelError, match="no weights: expected model.safetensors"):
        HFEngine.load(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="'bert' model.*supported model types are sam2_video"):
        HFEngine.load(str(tmp_path))
    with pytest.raises(ModelError, match="does not exist"):
        HFEngine.load(str(tmp_path / "missing"))


def test_named_model_offline_says_what_to_download(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as error:
        load_engine("sam2.1-hiera-tiny")
    message = str(error.value)
    assert "not downloaded and downloads are off" in message
    assert "hf download facebook/sam2.1-hiera-tiny --local-dir sam2.1-hiera-tiny" in message


def test_model_too_big_for_memory_is_refused(monkeypatch, checkpoints) -> None:
    monkeypatch.setattr(hf_models, "available_memory_bytes", lambda device: 200 << 20)
    with pytest.raises(ModelError, match=r"needs about 1\.0 GB of memory but only 0\.2 GB"):
        HFEngine.load(str(checkpoints["sam2"]))


def test_dtype_and_device_choices(checkpoints) -> None:
    with pytest.raises(ModelError, match="float16 needs a GPU"):
        HFEngine.load(str(checkpoints["sam2"]), dtype="float16")
    with pytest.raises(ModelError, match="apply to the transformers models"):
        load_engine("builtin", dtype="bfloat16")
    engine = HFEngine.load(str(checkpoints["sam2"]), dtype="bfloat16")
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    session = TrackingSession(np.zeros((3, HEIGHT, WIDTH, 3), np.uint8), engine=engine)
    session.add_mask(0, 1, np.pad(np.ones((10, 10), bool), ((5, 49), (5, 81))))
    assert [r.frame_index for r in session.propagate()] == [0, 1, 2]
