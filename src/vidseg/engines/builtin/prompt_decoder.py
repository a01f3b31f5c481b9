"""The prompt decoder: clicks, a box and the object's current mask on one frame become a mask.

Prompts enter as maps at stride 4 (positive clicks, negative clicks, the box, the current
mask) and, for the clicks, as similarity maps at stride 16: how much each cell's encoder
features resemble the clicked cells'. The similarity gives the decoder the whole frame's view
from one click (a textured object is selected in full); the maps give exact positions. The
decoding path is the mask decoder's: stride 16 up through the stride-8 and stride-4 features.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidseg.engines.builtin.encoder import (
    DEFAULT_PROMPT_VARIANT,
    ENCODER_VARIANTS,
    encoder_variant,
)
from vidseg.engines.builtin.mask_decoder import ResidualBlock, UpsampleFuse
from vidseg.engines.builtin.network import load_frozen, prompt_weights_path

PROMPT_MAPS = 4  # positive clicks, negative clicks, box, current mask


def click_similarity(
    features16: torch.Tensor, positive: np.ndarray, negative: np.ndarray
) -> torch.Tensor:
    """(2, h, w): the best cosine similarity of each stride-16 cell to the positive and to the
    negative clicked cells (zeros when there are none). ``positive`` / ``negative`` are (K, 2)
    (x, y) positions in stride-16 cells."""
    features = F.normalize(features16[0], dim=0)  # (C, h, w)
    height, width = features.shape[1:]
    maps = []
    for cells in (positive, negative):
        if len(cells) == 0:
            maps.append(torch.zeros(height, width))
            continue
        cols = np.clip(np.asarray(cells)[:, 0].astype(int), 0, width - 1)
        rows = np.clip(np.asarray(cells)[:, 1].astype(int), 0, height - 1)
        clicked = features[:, rows, cols]  # (C, K)
        maps.append(torch.einsum("chw,ck->khw", features, clicked).amax(0))
    return torch.stack(maps)


def prompt_maps(
    size: tuple[int, int],
    positive: np.ndarray,
    negative: np.ndarray,
    box: np.ndarray | None,
    current: np.ndarray | None,
    radius: float = 1.5,
) -> torch.Tensor:
    """(PROMPT_MAPS, h, w) maps at stride 4: discs at the clicks (positions in stride-4 cells),
    the box's inside (x1, y1, x2, y2 in cells) and the current soft mask (already at ``size``)."""
    height, width = size
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    maps = torch.zeros(PROMPT_MAPS, height, width)
    for channel, cells in ((0, positive), (1, negative)):
        for x, y in np.asarray(cells).reshape(-1, 2):
            disc = ((cols + 0.5 - x) ** 2 + (rows + 0.5 - y) ** 2) <= radius**2
            maps[channel][disc] = 1.0
    if box is not None:
        x1, y1, x2, y2 = box
        # Clamped: a slice from a negative start would wrap around to the far edge.
        top, left = max(0, int(y1)), max(0, int(x1))
        maps[2][top : max(top, int(np.ceil(y2))), left : max(left, int(np.ceil(x2)))] = 1.0
    if current is not None:
        maps[3] = torch.as_tensor(current, dtype=torch.float32)
    return maps


def click_pixel(x: float, y: float, shape: tuple[int, ...]) -> tuple[int, int]:
    """(row, column) of the pixel a click at (``x``, ``y``) lands on, clamped into a frame of
    ``shape`` (height, width, ...): a click on the border may be a hair outside it."""
    return min(max(int(y), 0), shape[0] - 1), min(max(int(x), 0), shape[1] - 1)


def honour_clicks(
    mask: np.ndarray, points: np.ndarray, labels: np.ndarray, max_radius: float
) -> np.ndarray:
    """``mask`` with every click it ignored honoured: around a positive click that
    fell outside the mask (or a negative one inside it), the largest disc that the mask
    treats uniformly there (at most ``max_radius`` px) takes the click's label. A click then
    always changes what it lands on, so the next click has something new to correct."""
    mask = mask.copy()
    for (x, y), label in zip(np.asarray(points).reshape(-1, 2), labels, strict=True):
        row, col = click_pixel(x, y, mask.shape)
        if mask[row, col] == bool(label):
            continue
        same = (mask == mask[row, col]).astype(np.uint8)
        radius = min(float(cv2.distanceTransform(same, cv2.DIST_L2, 5)[row, col]), max_radius)
        cv2.circle(
            mask.view(np.uint8), (col, row), max(int(radius), 1), int(bool(label)), thickness=-1
        )
    return mask


class PromptDecoder(nn.Module):
    """(stride-16/8/4 features, prompt maps at stride 4, click similarity at stride 16) ->
    mask logit at stride 4."""

    def __init__(
        self,
        feature_channels: Mapping[int, int] = ENCODER_VARIANTS[DEFAULT_PROMPT_VARIANT].channels,
    ) -> None:
        """``feature_channels``: the encoder's channels at strides 4, 8 and 16."""
        super().__init__()
        self.feature_channels = dict(feature_channels)
        self.feature_projection = nn.Conv2d(feature_channels[16], 64, 1)
        self.prompt_down = nn.Sequential(
            nn.Conv2d(PROMPT_MAPS, 16, 3, 2, 1), nn.ReLU(inplace=True), nn.Conv2d(16, 32, 3, 2, 1)
        )
        self.fuse16 = nn.Conv2d(64 + 32 + 2, 64, 3, 1, 1)
        self.refine16 = nn.Sequential(ResidualBlock(64), ResidualBlock(64))
        self.up8 = UpsampleFuse(64, feature_channels[8], 32)
        self.up4 = UpsampleFuse(32, feature_channels[4] + PROMPT_MAPS, 16)
        self.logit = nn.Conv2d(16, 1, 3, 1, 1)

    def forward(
        self,
        features16: torch.Tensor,
        features8: torch.Tensor,
        features4: torch.Tensor,
        maps4: torch.Tensor,
        similarity16: torch.Tensor,
    ) -> torch.Tensor:
        x = torch.cat(
            [self.feature_projection(features16), self.prompt_down(maps4), similarity16], 1
        )
        x = self.refine16(self.fuse16(x))
        x = self.up8(x, features8)
        x = self.up4(x, torch.cat([features4, maps4], 1))
        return self.logit(F.relu(x))

    @classmethod
    def pretrained(
        cls, path: str | Path | None = None, variant: str = DEFAULT_PROMPT_VARIANT
    ) -> PromptDecoder:
        """The decoder for encoder ``variant`` with its shipped weights (or those in ``path``,
        trained on that encoder's features), in eval mode, gradients off."""
        channels = encoder_variant(variant).channels
        return load_frozen(cls(channels), path or prompt_weights_path(variant))
