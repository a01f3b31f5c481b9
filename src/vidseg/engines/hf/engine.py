"""SAM 2.1, EdgeTAM and the SAM 3 tracker (transformers) behind vidseg's engine protocol.

The transformers video model keeps its state in an inference session. A vidseg tracker owns
one such session per propagation pass and streams frames into it one at a time, so nothing
is read ahead. The session would otherwise keep every frame's pixels and outputs; after each
frame the tracker drops what the model can no longer read (pixels, full-size masks, memories
older than the memory bank's reach), so memory stays flat however long the video is.

Prompted frames enter the model as masks (the session has already turned clicks and boxes
into masks with :meth:`HFEngine.mask_from_prompt`); tracked frames are remembered as the
model predicted them, as in SAM 2's own video predictor.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from vidseg.engines.allocator import keep_freed_memory
from vidseg.engines.base import ObjectPrediction
from vidseg.engines.hf.models import (
    Checkpoint,
    ModelFamily,
    check_memory,
    check_requirements,
    locate_checkpoint,
    read_checkpoint,
)
from vidseg.engines.hf.processing import Preprocessing, upsample_logits
from vidseg.errors import ModelError
from vidseg.io import VideoInfo
from vidseg.session.prompts import ObjectPrompt

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The object id used inside the one-frame sessions that turn a prompt into a mask.
_PROMPT_OBJECT = 1


def resolve_device(device: str | None) -> str:
    """``None`` -> CUDA when present, else the CPU."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelError(f"--device {device}: use cpu or cuda (cuda:0, cuda:1, ...)")
    return device


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    """``None`` -> float32; float16 only on a GPU (it is slow and lossy on CPUs)."""
    if dtype is None:
        return torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if dtype == "float16" and not device.startswith("cuda"):
        raise ModelError("--dtype float16 needs a GPU; on the CPU use float32 or bfloat16")
    return DTYPES[dtype]


class HFEngine:
    """A transformers SAM 2-family video model; implements :class:`vidseg.engines.base.Engine`.

    Load one with :meth:`load` (a name from :data:`vidseg.engines.hf.MODELS` or a checkpoint
    folder). Random weights, for a look without a download:

    >>> import tempfile
    >>> from vidseg.engines.hf import HFEngine, save_random_model
    >>> folder = save_random_model("sam2", tempfile.mkdtemp())
    >>> engine = HFEngine.load(str(folder))
    >>> engine.name, engine.device
    ('SAM 2.1 (random-sam2)', 'cpu')
    """

    def __init__(
        self,
        model: Any,
        family: ModelFamily,
        preprocessing: Preprocessing,
        *,
        name: str,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        import transformers

        keep_freed_memory()  # large per-frame tensors are reused rather than page-faulted in
        self.model = model
        self.family = family
        self.preprocessing = preprocessing
        self.name = name
        self.device = device
        self.dtype = dtype
        self._session_class = getattr(transformers, family.session_class)
        _fix_mask_output_shape(model)

    @classmethod
    def load(cls, model: str, *, device: str | None = None, dtype: str | None = None) -> HFEngine:
        """Load a named model (downloading it if needed and allowed) or a checkpoint folder."""
        checkpoint: Checkpoint = read_checkpoint(locate_checkpoint(model))
        check_requirements(checkpoint)
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        check_memory(checkpoint, device, torch.finfo(torch_dtype).bits // 8)
        import transformers
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # vidseg shows its own progress
        model_class = getattr(transformers, checkpoint.family.model_class)
        try:
            network = model_class.from_pretrained(checkpoint.directory, dtype=torch_dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"cannot load the model in '{checkpoint.directory}': {exc}") from exc
        network.to(device).eval()
        title = f"{checkpoint.family.title} ({checkpoint.directory.name})"
        return cls(
            network,
            checkpoint.family,
            checkpoint.preprocessing(int(network.config.image_size)),
            name=title,
            device=device,
            dtype=torch_dtype,
        )

    # -- the engine protocol --------------------------------------------------------------------
    def new_tracker(self, info: VideoInfo, *, reverse: bool = False) -> HFTracker:
        return HFTracker(self, info, reverse=reverse)

    def mask_from_prompt(
        self, frame: np.ndarray, prompt: ObjectPrompt, previous: np.ndarray | None = None
    ) -> np.ndarray:
        """Clicks and/or a box -> a mask, with SAM's prompt decoder.

        With ``previous`` (the object's current mask there), the clicks correct it as in SAM 2's
        video predictor: the frame is first segmented from memory of ``previous``, and the
        clicks are decoded on top of that memory.
        """
        if prompt.mask is not None:
            return prompt.mask.astype(bool)
        height, width = frame.shape[:2]
        session = self.new_session(height, width)
        pixels = self.preprocessing.frame_to_pixels(frame)
        coords, labels = self.preprocessing.prompt_points(
            prompt.points, prompt.labels, prompt.box, height, width
        )
        obj_idx = session.obj_id_to_idx(_PROMPT_OBJECT)
        target = 0
        with self._running():
            if previous is not None and previous.any():
                session.add_mask_inputs(obj_idx, 0, self.preprocessing.mask_to_input(previous))
                session.obj_with_new_inputs = [_PROMPT_OBJECT]
                self.model(session, frame_idx=0, frame=pixels)
                self.model(session, frame_idx=1, frame=pixels)  # now a frame tracked from memory
                target = 1
            else:
                session.add_new_frame(pixels, 0)
            session.add_point_inputs(
                obj_idx, target, {"point_coords": coords, "point_labels": labels}
            )
            session.obj_with_new_inputs = [_PROMPT_OBJECT]
            output = self.model(session, frame_idx=target)
        return (upsample_logits(output.pred_masks.cpu(), height, width)[0] > 0).numpy()

    # -- helpers --------------------------------------------------------------------------------
    def new_session(self, height: int, width: int) -> Any:
        """An empty transformers inference session for frames of this size, on this device."""
        return self._session_class(
            video_height=height,
            video_width=width,
            inference_device=self.device,
            inference_state_device=self.device,
            video_storage_device=self.device,
            dtype=self.dtype,
            max_vision_features_cache_size=1,
        )

    @contextmanager
    def _running(self) -> Iterator[None]:
        """Inference mode, and a clear message when the GPU runs out of memory."""
        try:
            with torch.inference_mode():
                yield
        except torch.OutOfMemoryError as exc:
            raise ModelError(
                f"{self.name} ran out of GPU memory: use --dtype bfloat16, a smaller model "
                "or a smaller video"
            ) from exc


def _fix_mask_output_shape(model: Any) -> None:
    """EdgeTAM's ``_use_mask_as_output`` (transformers 5.24) returns object scores of shape
    (1, 1) where every other path, and SAM 2's, gives (1, 1, 1); frames where a mask-prompted
    object meets a tracked one then fail to concatenate them. Give them the common shape."""
    original = model._use_mask_as_output

    def use_mask_as_output(*args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        if output.object_score_logits.dim() == 2:
            output.object_score_logits = output.object_score_logits[..., None]
        return output

    model._use_mask_as_output = use_mask_as_output


class HFTracker:
    """One propagation pass: a transformers inference session fed one frame at a time;
    implements :class:`vidseg.engines.base.Tracker`.

    The direction of travel matters to SAM 2's memory (which neighbours it reads): the
    session says it when it starts the pass (``reverse``).
    """

    def __init__(self, engine: HFEngine, info: VideoInfo, *, reverse: bool = False) -> None:
        self.engine = engine
        self.info = info
        self.session = engine.new_session(info.height, info.width)
        self.stage_seconds = {"preprocess": 0.0, "model": 0.0, "postprocess": 0.0}
        self.reverse = reverse
        config = engine.model.config
        # How far back the model reads: memories of the last num_maskmem - 1 frames, object
        # pointers of the last max_object_pointers_in_encoder - 1.
        self._memory_reach = config.num_maskmem - 1
        self._pointer_reach = max(config.max_object_pointers_in_encoder - 1, self._memory_reach)

    def remember(
        self,
        frame_index: int,
        frame: np.ndarray,
        masks: Mapping[int, np.ndarray],
        *,
        prompted: bool,
    ) -> None:
        if not prompted:
            return  # the model stored its own prediction for this frame when predicting it
        session, prep = self.session, self.engine.preprocessing
        start = time.perf_counter()
        pixels = prep.frame_to_pixels(frame)
        for obj_id, mask in masks.items():
            obj_idx = session.obj_id_to_idx(obj_id)
            session.add_mask_inputs(obj_idx, frame_index, prep.mask_to_input(mask))
            session.remove_point_inputs(obj_idx, frame_index)
        session.obj_with_new_inputs = list(masks)
        self.stage_seconds["preprocess"] += time.perf_counter() - start
        start = time.perf_counter()
        with self.engine._running():
            self.engine.model(session, frame_idx=frame_index, frame=pixels)
        self.stage_seconds["model"] += time.perf_counter() - start
        # The model also tracked the objects not prompted here, out of order: forget that.
        for obj_idx, obj_id in enumerate(session.obj_ids):
            session.mask_inputs_per_obj[obj_idx].pop(frame_index, None)
            if obj_id not in masks:
                session.output_dict_per_obj[obj_idx]["non_cond_frame_outputs"].pop(
                    frame_index, None
                )
                session.frames_tracked_per_obj[obj_idx].pop(frame_index, None)
        self._forget(frame_index)

    def predict(self, frame_index: int, frame: np.ndarray) -> dict[int, ObjectPrediction]:
        session = self.session
        start = time.perf_counter()
        pixels = self.engine.preprocessing.frame_to_pixels(frame)
        self.stage_seconds["preprocess"] += time.perf_counter() - start
        start = time.perf_counter()
        with self.engine._running():
            output = self.engine.model(
                session, frame_idx=frame_index, frame=pixels, reverse=self.reverse
            )
        self.stage_seconds["model"] += time.perf_counter() - start
        start = time.perf_counter()
        logits = upsample_logits(output.pred_masks.cpu(), self.info.height, self.info.width)
        probabilities = torch.sigmoid(logits).numpy()
        presence = torch.sigmoid(output.object_score_logits.float().cpu().reshape(-1)).numpy()
        predictions = {
            int(obj_id): ObjectPrediction(probabilities[row], float(presence[row]))
            for row, obj_id in enumerate(output.object_ids)
        }
        self._forget(frame_index)
        self.stage_seconds["postprocess"] += time.perf_counter() - start
        return predictions

    def _forget(self, frame_index: int) -> None:
        """Drop what the model will not read again, so that memory does not grow with the
        video: frame pixels, full-size mask logits, and memories beyond the bank's reach."""
        session = self.session
        if session.processed_frames:
            session.processed_frames.clear()  # pixels are only read while a frame is processed
        step = -1 if self.reverse else 1
        for obj_idx, outputs in session.output_dict_per_obj.items():
            for output in outputs["cond_frame_outputs"].values():
                output.pop("high_res_masks", None)
            recent = outputs["non_cond_frame_outputs"]
            for t in list(recent):
                distance = (frame_index - t) * step
                if abs(distance) > self._pointer_reach:
                    del recent[t]
                    continue
                recent[t].pop("high_res_masks", None)
                recent[t].pop("pred_masks", None)
                if distance > self._memory_reach:  # only its object pointer is read now
                    recent[t].pop("maskmem_features", None)
                    recent[t].pop("maskmem_pos_enc", None)
            tracked = session.frames_tracked_per_obj[obj_idx]
            for t in [t for t in tracked if abs(frame_index - t) > self._pointer_reach]:
                del tracked[t]
