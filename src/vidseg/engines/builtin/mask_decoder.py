"""The mask decoder: from the value read out of memory at stride 16, up through the encoder's
stride-8 and stride-4 features (and stride-2, for decoders with a fourth width), to a mask
logit at stride 4 or 2 (U-Net style skips), and whether the object is in the frame at all (a
presence logit, as SAM 2's occlusion score). Decoders trained with ``previous_mask`` also read
the object's mask on the frame before (a short-term prior, the role of Cutie's and XMem's
sensory memory), at strides 16 and 4."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class UpsampleFuse(nn.Module):
    """Upsample x2, add the projected skip features, refine."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, out_channels, 1)
        self.skip = nn.Conv2d(skip_channels, out_channels, 1)
        self.refine = ResidualBlock(out_channels)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, extra: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``extra``: added beside the projected skip features (already ``out_channels``)."""
        x = F.interpolate(
            self.reduce(x), size=skip.shape[-2:], mode="bilinear", align_corners=False
        )
        x = x + self.skip(skip)
        return self.refine(x if extra is None else x + extra)


class DecodedMasks(NamedTuple):
    mask_logits: torch.Tensor  # (N, 1, H/4, W/4), or H/2, W/2 with a stride-2 stage
    presence_logits: torch.Tensor  # (N,): is the object visible in the frame at all?


class MaskDecoder(nn.Module):
    """(read-out values, query features at strides 16/8/4) -> mask logit at stride 4; with a
    fourth width, on through the stride-2 features to a logit at stride 2.

    The query frame's own features enter at every scale: they carry the edges the coarse
    read-out lacks. ``query16`` is the projected stride-16 feature map, computed once per frame
    and shared by all objects (see :meth:`project_query`).
    """

    def __init__(
        self,
        value_channels: int = 64,
        channels: tuple[int, ...] = (64, 32, 16),
        feature_channels: tuple[int, ...] = (112, 40, 24, 16),
        previous_mask: bool = False,
    ):
        """``channels``: the decoder's own at strides 16, 8, 4 (and 2); ``feature_channels``:
        the encoder's at strides 16, 8, 4, 2; ``previous_mask``: whether it reads the object's
        mask on the previous frame too."""
        super().__init__()
        c16, c8, c4 = channels[:3]
        f16, f8, f4 = feature_channels[:3]
        self.query_projection = nn.Conv2d(f16, c16, 1)
        self.fuse16 = nn.Conv2d(value_channels + c16, c16, 3, 1, 1)
        self.refine16 = ResidualBlock(c16)
        self.up8 = UpsampleFuse(c16, f8, c8)
        self.up4 = UpsampleFuse(c8, f4, c4)
        self.up2 = UpsampleFuse(c4, feature_channels[3], channels[3]) if len(channels) > 3 else None
        self.logit = nn.Conv2d(channels[-1], 1, 3, 1, 1)
        # The previous frame's mask, embedded where the decoder decides (stride 16) and where
        # it draws the boundary (stride 4).
        self.previous16 = nn.Conv2d(1, c16, 3, 1, 1) if previous_mask else None
        self.previous4 = nn.Conv2d(1, c4, 3, 1, 1) if previous_mask else None
        # Presence from the whole frame's stride-16 state: its mean and its peak.
        self.presence = nn.Linear(2 * c16, 1)

    @property
    def output_stride(self) -> int:
        """The stride of the mask logit: 2 with a stride-2 stage, else 4."""
        return 4 if self.up2 is None else 2

    @property
    def reads_previous_mask(self) -> bool:
        """Whether :meth:`forward` needs ``previous`` (the object's mask on the frame before)."""
        return self.previous4 is not None

    def project_query(self, features16: torch.Tensor) -> torch.Tensor:
        return self.query_projection(features16)

    def forward(
        self,
        readout: torch.Tensor,
        query16: torch.Tensor,
        features8: torch.Tensor,
        features4: torch.Tensor,
        features2: torch.Tensor | None = None,
        previous: torch.Tensor | None = None,
    ) -> DecodedMasks:
        """All inputs batched over objects (N); ``features2`` is needed with a stride-2
        stage, and ``previous`` (N, 1, H/4, W/4), the object's mask probability on the frame
        before (its prompt on a prompted frame), by a decoder that reads it."""
        x = self.fuse16(torch.cat([readout, query16], 1))
        previous4 = None
        if self.previous4 is not None and self.previous16 is not None:
            if previous is None:
                raise ValueError("this mask decoder reads the previous frame's mask: pass previous")
            previous4 = self.previous4(previous)
            x = x + self.previous16(F.adaptive_avg_pool2d(previous, x.shape[-2:]))
        x = self.refine16(x)
        pooled = torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)
        presence_logits = self.presence(F.relu(pooled))[:, 0]
        x = self.up8(x, features8)
        x = self.up4(x, features4, previous4)
        if self.up2 is not None:
            if features2 is None:
                raise ValueError("this mask decoder has a stride-2 stage: pass features2")
            x = self.up2(x, features2)
        return DecodedMasks(self.logit(F.relu(x)), presence_logits)
