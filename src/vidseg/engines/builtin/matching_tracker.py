"""The training-free tracker: encode, match against memory, propagate labels, remember."""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np
import torch

from vidseg.engines.base import ObjectPrediction
from vidseg.engines.builtin.config import BuiltinConfig
from vidseg.engines.builtin.encoder import ImageEncoder
from vidseg.engines.builtin.memory_bank import MemoryFrame
from vidseg.engines.builtin.readout import frame_keys, read_out
from vidseg.engines.builtin.refine import upsample_probability
from vidseg.engines.builtin.tracker import MemoryTracker
from vidseg.io import VideoInfo


class MatchingTracker(MemoryTracker):
    """The training-free tracker (the engine before its learned parts): label propagation by
    feature matching. Kept as a reference that needs no trained weights; implements
    :class:`vidseg.engines.base.Tracker`."""

    def __init__(self, encoder: ImageEncoder, config: BuiltinConfig, info: VideoInfo) -> None:
        super().__init__(encoder, config, info)
        self._cached_index: int | None = None
        self._cached_keys: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- encoding -----------------------------------------------------------------------------
    def _keys(self, frame_index: int, frame: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cached_index != frame_index or self._cached_keys is None:
            features = self._encode_image(frame)
            with torch.inference_mode():
                keys = frame_keys(features, self.config.readout.stride8_weight)
            self._cached_index, self._cached_keys = frame_index, keys
        return self._cached_keys

    def _downsample(self, mask: np.ndarray, stride: int) -> torch.Tensor:
        height, width = self.input_size[0] // stride, self.input_size[1] // stride
        small = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(small)

    # -- the Tracker protocol -----------------------------------------------------------------
    def _memory_frame(
        self, frame_index: int, frame: np.ndarray, masks: Mapping[int, np.ndarray], prompted: bool
    ) -> MemoryFrame:
        key16, _ = self._keys(frame_index, frame)
        with self._stage("memory encoder"):
            values16 = {obj: self._downsample(mask, 16) for obj, mask in masks.items()}
        return MemoryFrame(frame_index, prompted, key16, values16)

    def predict(self, frame_index: int, frame: np.ndarray) -> dict[int, ObjectPrediction]:
        object_ids = self.memory.object_ids()
        if not object_ids:
            return {}
        key16, key8 = self._keys(frame_index, frame)
        readout = self.config.readout
        with self._stage("read-out"), torch.inference_mode():
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
            with self._stage("upsample"):
                probability = upsample_probability(
                    coarse[obj].numpy(),
                    guide,
                    self.frame_size,
                    self.config.refine.guided_radius,
                    self.config.refine.guided_eps,
                )
            with self._stage("presence"):
                predictions[obj] = ObjectPrediction(probability, self._presence(obj, probability))
        return predictions
