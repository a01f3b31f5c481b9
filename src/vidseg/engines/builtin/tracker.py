"""One propagation pass of the built-in engine: encode, read out from memory, refine, remember."""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np
import torch

from vidseg.engines.base import ObjectPrediction
from vidseg.engines.builtin.config import BuiltinConfig
from vidseg.engines.builtin.encoder import EfficientNetLite0Encoder, normalize
from vidseg.engines.builtin.memory_bank import MemoryBank, MemoryFrame
from vidseg.engines.builtin.readout import frame_keys, read_out
from vidseg.engines.builtin.refine import upsample_probability
from vidseg.io import VideoInfo


def encoder_input_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(height, width) the encoder sees: scaled to ``long_side``, multiples of 16.

    Small videos are scaled up too: the encoder needs objects to span several stride-16 cells.
    """
    scale = long_side / max(height, width)
    return (max(16, round(height * scale / 16) * 16), max(16, round(width * scale / 16) * 16))


class BuiltinTracker:
    """Memory of one propagation pass; implements :class:`vidseg.engines.base.Tracker`."""

    def __init__(
        self, encoder: EfficientNetLite0Encoder, config: BuiltinConfig, info: VideoInfo
    ) -> None:
        self.encoder = encoder
        self.config = config
        self.frame_size = (info.height, info.width)
        self.input_size = encoder_input_size(info.height, info.width, config.encoder.long_side)
        self.memory = MemoryBank(config.memory.recent_frames)
        self._cached_index: int | None = None
        self._cached_keys: tuple[torch.Tensor, torch.Tensor] | None = None
        self._reference_area: dict[int, float] = {}
        self._frames_since_stored = 0

    # -- encoding -----------------------------------------------------------------------------
    def _keys(self, frame_index: int, frame: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cached_index != frame_index or self._cached_keys is None:
            height, width = self.input_size
            small = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            image = torch.from_numpy(small).permute(2, 0, 1)[None]
            with torch.inference_mode():
                features = self.encoder(
                    normalize(image).contiguous(memory_format=torch.channels_last)
                )
                keys = frame_keys(features, self.config.readout.stride8_weight)
            self._cached_index, self._cached_keys = frame_index, keys
        return self._cached_keys

    def _downsample(self, mask: np.ndarray, stride: int) -> torch.Tensor:
        height, width = self.input_size[0] // stride, self.input_size[1] // stride
        small = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(small)

    # -- the Tracker protocol -----------------------------------------------------------------
    def remember(
        self,
        frame_index: int,
        frame: np.ndarray,
        masks: Mapping[int, np.ndarray],
        *,
        prompted: bool,
    ) -> None:
        if not prompted:
            self._frames_since_stored += 1
            if self._frames_since_stored < self.config.memory.every:
                return
            self._frames_since_stored = 0
        key16, _ = self._keys(frame_index, frame)
        values16 = {obj: self._downsample(mask, 16) for obj, mask in masks.items()}
        if prompted:
            for obj, mask in masks.items():
                self._reference_area[obj] = float(mask.sum())
        self.memory.add(MemoryFrame(frame_index, prompted, key16, values16))

    def predict(self, frame_index: int, frame: np.ndarray) -> dict[int, ObjectPrediction]:
        object_ids = self.memory.object_ids()
        if not object_ids:
            return {}
        key16, key8 = self._keys(frame_index, frame)
        readout = self.config.readout
        with torch.inference_mode():
            coarse = read_out(
                key8 if readout.query_stride == 8 else key16,
                list(self.memory),
                object_ids,
                top_k=readout.top_k,
                temperature=readout.temperature,
                local_radius=readout.local_radius,
            )
        guide = None
        if self.config.refine.guided_radius > 0:
            guide = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        predictions = {}
        for obj in object_ids:
            probability = upsample_probability(
                coarse[obj].numpy(),
                guide,
                self.frame_size,
                self.config.refine.guided_radius,
                self.config.refine.guided_eps,
            )
            predictions[obj] = ObjectPrediction(probability, self._presence(obj, probability))
        return predictions

    def _presence(self, obj: int, probability: np.ndarray) -> float:
        presence = self.config.presence
        area = float((probability >= presence.threshold).sum())
        reference = self._reference_area.get(obj, 0.0)
        if reference > 0 and area < presence.min_area_ratio * reference:
            return min(float(probability.max()), 0.49)
        return float(probability.max())
