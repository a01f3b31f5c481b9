"""The mask refiner: the prompt decoder's coarse mask, redrawn at the frame's own resolution.

The prompt decoder's logit has one cell per 4 encoder-input pixels, about 6 frame pixels on a
480p frame: a kite's lines or a wheel's spokes, a pixel or two wide, cannot be drawn at that
grid whatever the decoder learns (the true mask itself, brought to that grid and back, scores
IoU 0.74 on DAVIS val ``kite-surf``). The refiner looks at the frame's pixels, the coarse
probability and the clicks, and adds a correction to the coarse logit, as CascadePSP and
FocalClick refine a coarse mask. It runs on the box around the object (and the clicks) only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidseg.engines.builtin.network import load_frozen, read_weights, refiner_weights_path

# ImageNet statistics, for RGB in [0, 1].
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# Inputs: RGB, coarse probability, positive and negative click maps.
INPUT_CHANNELS = 6
# Click maps are Gaussians of this many frame pixels (standard deviation).
CLICK_SIGMA = 4.0
# The refined box: the object's (and clicks') box grown by this many pixels on each side.
CROP_MARGIN = 32
# Pixels with a coarse probability above this belong to the object's box.
_BOX_PROBABILITY = 0.02
# The logit's range: a saturated coarse logit would leave the refiner nothing to correct.
LOGIT_LIMIT = 6.0


def click_maps(size: tuple[int, int], points: np.ndarray, labels: np.ndarray) -> torch.Tensor:
    """(2, height, width): at each pixel, the nearest positive and negative click as a
    Gaussian bump (1 on the click, ``CLICK_SIGMA`` pixels wide); ``points`` are (x, y) pixels.

    >>> maps = click_maps((5, 6), np.array([[2.5, 1.5]]), np.array([1]))
    >>> float(maps[0, 1, 2]), float(maps[1].max())
    (1.0, 0.0)
    """
    height, width = size
    rows = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    cols = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    maps = torch.zeros(2, height, width)
    for (x, y), label in zip(np.asarray(points).reshape(-1, 2), labels, strict=True):
        bump = torch.exp(-((cols - float(x)) ** 2 + (rows - float(y)) ** 2) / (2 * CLICK_SIGMA**2))
        channel = 0 if label == 1 else 1
        maps[channel] = torch.maximum(maps[channel], bump)
    return maps


def refiner_input(
    image: np.ndarray, coarse_logit: torch.Tensor, points: np.ndarray, labels: np.ndarray
) -> torch.Tensor:
    """(1, INPUT_CHANNELS, height, width): ``image`` (RGB uint8, height x width) normalised,
    the coarse probability (from ``coarse_logit``, height x width) and the click maps."""
    probability = torch.sigmoid(coarse_logit)[None, None]
    clicks = click_maps(image.shape[:2], points, labels)[None]
    return torch.cat([normalized_rgb(image), probability, clicks], 1)


def normalized_rgb(image: np.ndarray) -> torch.Tensor:
    """(1, 3, height, width): RGB uint8 ``image`` as a refiner reads it (ImageNet-normalised)."""
    rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    return (rgb - _MEAN) / _STD


class MaskRefiner(nn.Module):
    """(refiner input, coarse logit) at full resolution -> refined logit, as a residual.

    A small U-Net: stride 2 and 4 for context (dilated convolutions at stride 4 see about 60
    pixels around each one), back up to stride 1, where the frame's own pixels decide.
    """

    def __init__(self, width: int = 16, input_channels: int = INPUT_CHANNELS) -> None:
        """``width``: channels at stride 2; ``input_channels``: what each pixel brings (the
        click refiner's :func:`refiner_input`, or the thin-part refiner's
        :func:`~vidseg.engines.builtin.thin_parts.thin_part_input`)."""
        super().__init__()
        self.down2 = nn.Sequential(
            nn.Conv2d(input_channels, width, 3, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1),
            nn.ReLU(inplace=True),
        )
        self.down4 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(inplace=True))
        self.context4 = nn.ModuleList(
            nn.Conv2d(2 * width, 2 * width, 3, 1, dilation, dilation=dilation)
            for dilation in (1, 2, 4)
        )
        self.up2 = nn.Conv2d(3 * width, width, 3, 1, 1)
        self.up1 = nn.Sequential(
            nn.Conv2d(width + input_channels, width // 2, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, 1, 3, 1, 1),
        )

    @property
    def input_channels(self) -> int:
        """How many maps each input pixel has."""
        return self.down2[0].in_channels

    def forward(self, inputs: torch.Tensor, coarse_logit: torch.Tensor) -> torch.Tensor:
        """``inputs`` (N, input channels, H, W) with H and W multiples of 4; ``coarse_logit``
        (N, 1, H, W). Returns the refined logit (N, 1, H, W)."""
        x2 = self.down2(inputs)
        x = self.down4(x2)
        for convolution in self.context4:
            x = x + F.relu(convolution(x))
        x = F.interpolate(x, size=x2.shape[-2:], mode="bilinear", align_corners=False)
        x = F.relu(self.up2(torch.cat([x, x2], 1)))
        x = F.interpolate(x, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        return coarse_logit + self.up1(torch.cat([x, inputs], 1))

    @classmethod
    def pretrained(cls, path: str | Path | None = None) -> MaskRefiner:
        """The refiner with its shipped weights (or those in ``path``, of any width and
        inputs), in eval mode."""
        path = path or refiner_weights_path()
        state = read_weights(path)
        width, input_channels = state["down2.0.weight"].shape[:2]
        return load_frozen(cls(width, input_channels), path, state)


def refine_region(
    probability: np.ndarray, points: np.ndarray, margin: int = CROP_MARGIN
) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the box around the object (pixels of ``probability``
    above 0.02) and the clicks, grown by ``margin`` and clipped to the frame; None when there
    is nothing to refine.

    >>> probability = np.zeros((100, 200), np.float32); probability[40:50, 60:80] = 0.9
    >>> refine_region(probability, np.array([[195.0, 20.0]]), margin=8)
    (12, 58, 52, 200)
    """
    height, width = probability.shape
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    rows, cols = np.nonzero(probability > _BOX_PROBABILITY)
    ys = np.concatenate([rows, points[:, 1].astype(int)])
    xs = np.concatenate([cols, points[:, 0].astype(int)])
    if len(ys) == 0:
        return None
    top, bottom = max(0, ys.min() - margin), min(height, ys.max() + 1 + margin)
    left, right = max(0, xs.min() - margin), min(width, xs.max() + 1 + margin)
    return int(top), int(bottom), int(left), int(right)


def refine_logit(
    refiner: MaskRefiner,
    image: np.ndarray,
    coarse_logit: torch.Tensor,
    points: np.ndarray,
    labels: np.ndarray,
) -> torch.Tensor:
    """The refined logit of a whole frame (height x width), from the coarse one: the box
    around the object is refined, the rest kept."""
    coarse_logit = coarse_logit.clamp(-LOGIT_LIMIT, LOGIT_LIMIT)
    region = refine_region(torch.sigmoid(coarse_logit).numpy(), points)
    if region is None:
        return coarse_logit
    top, bottom, left, right = region
    crop_logit = coarse_logit[top:bottom, left:right]
    offset = np.array([left, top], dtype=np.float32)
    inputs = refiner_input(image[top:bottom, left:right], crop_logit, points - offset, labels)
    padded_height, padded_width = -(-(bottom - top) // 4) * 4, -(-(right - left) // 4) * 4
    pad = (0, padded_width - (right - left), 0, padded_height - (bottom - top))
    with torch.inference_mode():
        refined = refiner(
            F.pad(inputs, pad, mode="replicate"), F.pad(crop_logit[None, None], pad, "replicate")
        )[0, 0, : bottom - top, : right - left]
    out = coarse_logit.clone()
    out[top:bottom, left:right] = refined
    return out
