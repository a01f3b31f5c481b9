"""Pre- and post-processing for the SAM 2 family, with torch alone (no torchvision).

transformers' processors for these models (``Sam2VideoProcessor``, its image and video
processors) need torchvision, which has no build for the CPU torch that vidseg pins. The
arithmetic is small, so vidseg does it here: resize and normalise a frame, scale clicks and
boxes to the model's input square, resize a mask prompt, and upsample the predicted mask
logits to the frame. ``tests/test_hf_engines.py`` checks every function against the
transformers code it replaces, on the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: ImageNet statistics (transformers' ``IMAGENET_DEFAULT_MEAN``/``_STD``): SAM 2.1, EdgeTAM.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: transformers' ``IMAGENET_STANDARD_MEAN``/``_STD``: SAM 3.
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)
RESCALE_FACTOR = 1 / 255
#: Label values that the SAM prompt encoder reads as a box's top-left and bottom-right corners.
BOX_CORNER_LABELS = (2, 3)


@dataclass(frozen=True)
class Preprocessing:
    """How frames and prompts are turned into a model's inputs.

    >>> import numpy as np
    >>> prep = Preprocessing(image_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    >>> prep.frame_to_pixels(np.zeros((48, 80, 3), np.uint8)).shape
    torch.Size([3, 64, 64])
    >>> prep.scale_points(np.array([[40.0, 24.0]]), height=48, width=80).tolist()
    [[32.0, 32.0]]
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def frame_to_pixels(self, frame: np.ndarray) -> torch.Tensor:
        """An (H, W, 3) uint8 RGB frame as the model's (3, S, S) float32 input.

        The same steps as ``Sam2VideoVideoProcessor``: a bilinear, antialiased resize of the
        uint8 image to S x S, to uint8 again, then the fused rescale and normalise,
        ``(x - 255 mean) / (255 std)``. The resize is torchvision's ``resize_image`` on the
        CPU: torch's native uint8 kernel where torch dispatches to AVX2, elsewhere (AVX512,
        ARM, ...) float32 then rounded; the two differ by 1 on some pixels.
        """
        image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]
        size = (self.image_size, self.image_size)
        # torchvision's own test (_do_native_uint8_resize_on_cpu), so that the pixels are
        # transformers' on whatever CPU this runs.
        native_uint8 = "AVX2" in torch.backends.cpu.get_cpu_capability()
        resized = F.interpolate(
            image if native_uint8 else image.to(torch.float32),
            size=size,
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        if not native_uint8:
            resized = resized.round_().to(torch.uint8)
        scale = 1.0 / RESCALE_FACTOR
        mean = torch.tensor(self.mean) * scale
        std = torch.tensor(self.std) * scale
        return (resized[0].to(torch.float32) - mean[:, None, None]) / std[:, None, None]

    def scale_points(self, points: np.ndarray, height: int, width: int) -> torch.Tensor:
        """(x, y) pixel coordinates on an H x W frame -> (N, 2) float32 coordinates on the
        S x S input. As in the processor, the factors S / W and S / H are float32 tensors (its
        frame sizes are tensors), so that the rounding is the same."""
        scaled = torch.tensor(np.asarray(points, dtype=np.float32).reshape(-1, 2))
        scaled[:, 0] = scaled[:, 0] * (self.image_size / torch.tensor(width))
        scaled[:, 1] = scaled[:, 1] * (self.image_size / torch.tensor(height))
        return scaled

    def prompt_points(
        self,
        points: np.ndarray,
        labels: np.ndarray,
        box: np.ndarray | None,
        height: int,
        width: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clicks and an optional box as the model's point inputs: coordinates (1, 1, N, 2)
        and labels (1, 1, N). A box becomes two corner points, before the clicks."""
        coords = [self.scale_points(points, height, width)]
        point_labels = [torch.tensor(np.asarray(labels, dtype=np.int64).reshape(-1))]
        if box is not None:
            coords.insert(0, self.scale_points(np.asarray(box).reshape(2, 2), height, width))
            point_labels.insert(0, torch.tensor(BOX_CORNER_LABELS, dtype=torch.int64))
        return torch.cat(coords)[None, None], torch.cat(point_labels)[None, None]

    def mask_to_input(self, mask: np.ndarray) -> torch.Tensor:
        """A boolean (H, W) mask as the model's (1, 1, S, S) mask input: an antialiased
        bilinear resize, then 0/1 at 0.5."""
        tensor = torch.from_numpy(np.asarray(mask, dtype=bool)).to(torch.float32)[None, None]
        if tensor.shape[-2:] == (self.image_size, self.image_size):
            return tensor
        size = (self.image_size, self.image_size)
        resized = F.interpolate(
            tensor, size=size, mode="bilinear", align_corners=False, antialias=True
        )
        return (resized >= 0.5).to(torch.float32)


def upsample_logits(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Low-resolution mask logits (N, 1, h, w) -> (N, H, W) float32 logits at frame size: a
    bilinear resize, as ``Sam2ImageProcessor.post_process_masks``; the mask is logits > 0.

    >>> upsample_logits(torch.zeros(2, 1, 16, 16), 48, 80).shape
    torch.Size([2, 48, 80])
    """
    upsampled = F.interpolate(
        logits.to(torch.float32), size=(height, width), mode="bilinear", align_corners=False
    )
    return upsampled[:, 0]
