"""The memory encoder: turns a frame's features and an object's mask into that object's memory
values (what the object looked like there, and where it was)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VALUE_CHANNELS = 64


class MemoryEncoder(nn.Module):
    """(stride-16 features, stride-4 mask) -> (``VALUE_CHANNELS``, H/16, W/16) values.

    The last value channel is the mask itself, area-averaged to stride 16: reading it out is
    plain label propagation, which the learned channels then only have to correct.
    """

    def __init__(self, feature_channels: int = 112, value_channels: int = VALUE_CHANNELS) -> None:
        super().__init__()
        self.mask_down = nn.Sequential(
            nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(inplace=True), nn.Conv2d(16, 32, 3, 2, 1)
        )
        self.feature_projection = nn.Conv2d(feature_channels, 64, 1)
        self.fuse = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(96, 64, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, value_channels - 1, 3, 1, 1),
        )

    def forward(self, features16: torch.Tensor, mask4: torch.Tensor) -> torch.Tensor:
        """``features16``: (N, C, h, w); ``mask4``: (N, 1, 4h, 4w) soft mask in [0, 1]."""
        mask_features = self.mask_down(mask4 * 2 - 1)
        fused = torch.cat([self.feature_projection(features16), mask_features], 1)
        pooled_mask = F.avg_pool2d(mask4, 4)
        return torch.cat([self.fuse(fused), pooled_mask], 1)
