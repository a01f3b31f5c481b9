"""The learned parts of the built-in engine, on top of the frozen encoder.

Three components, as in SAM 2's split: a key projection with the memory attention
(:mod:`.memory_attention`), a memory encoder (:mod:`.memory_encoder`) and a mask decoder
(:mod:`.mask_decoder`). They are trained together by ``training/train_tracker.py`` on the DAVIS
train sequences; the weights (about 1 MB) ship in ``weights/`` beside this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from vidseg.engines.builtin.mask_decoder import DecodedMasks, MaskDecoder
from vidseg.engines.builtin.memory_attention import KeyProjection, memory_affinity, read_values
from vidseg.engines.builtin.memory_encoder import MemoryEncoder

WEIGHTS_DIR = Path(__file__).with_name("weights")
WEIGHTS_PATH = WEIGHTS_DIR / "tracking_network.pt"
PROMPT_WEIGHTS_PATH = WEIGHTS_DIR / "prompt_decoder.pt"

_Module = TypeVar("_Module", bound=nn.Module)


def load_frozen(module: _Module, path: str | Path) -> _Module:
    """Load float16 weights saved by the training scripts; eval mode, gradients off."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict({name: value.float() for name, value in state.items()})
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def save_half(module: nn.Module, path: str | Path) -> None:
    """Save the weights as float16 (half the size; inference runs in float32), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({name: value.half() for name, value in module.state_dict().items()}, partial)
    partial.rename(path)


class TrackingNetwork(nn.Module):
    """Key projection + memory encoder + mask decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.key_projection = KeyProjection()
        self.memory_encoder = MemoryEncoder()
        self.mask_decoder = MaskDecoder()

    def segment(
        self,
        query_key: torch.Tensor,
        query16: torch.Tensor,
        features8: torch.Tensor,
        features4: torch.Tensor,
        memory_keys: torch.Tensor,
        memory_values: torch.Tensor,
    ) -> DecodedMasks:
        """Mask logits at stride 4 and presence logits for a query frame, read from memory.

        ``query_key`` (N, C, h, w) and ``query16`` (N, 64, h, w, from
        ``mask_decoder.project_query``); ``memory_keys`` (N, C, M) and ``memory_values``
        (N, V, M) flatten every memory frame's cells into M. N batches clips or objects.
        """
        affinity = memory_affinity(query_key, memory_keys)
        readout = read_values(affinity, memory_values, query_key.shape[-2:])
        return self.mask_decoder(readout, query16, features8, features4)

    @classmethod
    def pretrained(cls, path: str | Path = WEIGHTS_PATH) -> TrackingNetwork:
        """The network with the shipped weights, in eval mode, gradients off."""
        return load_frozen(cls(), path)
