"""The learned parts of the built-in engine, on top of the frozen encoder.

Three components, as in SAM 2's split: a key projection with the memory attention
(:mod:`.memory_attention`), a memory encoder (:mod:`.memory_encoder`) and a mask decoder
(:mod:`.mask_decoder`). They are trained together by ``training/train_tracker.py`` on the DAVIS
train sequences; the weights (about 1 MB) ship in ``weights/`` beside this file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from vidseg.engines.builtin.encoder import (
    DEFAULT_PROMPT_VARIANT,
    DEFAULT_VARIANT,
    ENCODER_VARIANTS,
    encoder_variant,
)
from vidseg.engines.builtin.mask_decoder import DecodedMasks, MaskDecoder
from vidseg.engines.builtin.memory_attention import KeyProjection, memory_affinity, read_values
from vidseg.engines.builtin.memory_encoder import MemoryEncoder

WEIGHTS_DIR = Path(__file__).with_name("weights")


def tracker_weights_path(variant: str = DEFAULT_VARIANT, seed: int = 0) -> Path:
    """The shipped tracker weights, trained on encoder ``variant``'s features with ``seed``
    (``training/train_tracker.py --seed``)."""
    suffix = f"_seed{seed}" if seed else ""
    return WEIGHTS_DIR / f"tracking_network_{encoder_variant(variant).name}{suffix}.pt"


def shipped_tracker_weights(variant: str = DEFAULT_VARIANT) -> list[Path]:
    """Every shipped tracker network for encoder ``variant``, seed 0's first: the members of
    the default ensemble.

    >>> [path.name for path in shipped_tracker_weights("lite2")]
    ['tracking_network_lite2.pt', 'tracking_network_lite2_seed1.pt']
    """
    first = tracker_weights_path(variant)
    others = sorted(
        WEIGHTS_DIR.glob(f"{first.stem}_seed*.pt"),
        key=lambda path: int(path.stem.rsplit("seed")[-1]),
    )
    return [first, *others]


def prompt_weights_path(variant: str = DEFAULT_PROMPT_VARIANT) -> Path:
    """The shipped prompt-decoder weights, trained on encoder ``variant``'s features."""
    return WEIGHTS_DIR / f"prompt_decoder_{encoder_variant(variant).name}.pt"


def refiner_weights_path() -> Path:
    """The shipped mask-refiner weights (frame pixels in, no encoder features)."""
    return WEIGHTS_DIR / "mask_refiner.pt"


def thin_parts_weights_path() -> Path:
    """The shipped thin-part refiner's weights (a mask refiner reading the tracker's output)."""
    return WEIGHTS_DIR / "thin_parts.pt"


_Module = TypeVar("_Module", bound=nn.Module)

#: The mask decoder's own channels at strides 16, 8 and 4 (the shipped Lite2 weights' widths
#: since 0.12.0; Lite0's are 64, 32, 16); a fourth width adds a stage at stride 2.
DECODER_CHANNELS = (64, 48, 32)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file saved by :func:`save_half`."""
    return torch.load(path, map_location="cpu", weights_only=True)


def decoder_channels_of(weights: str | Path | Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    """The mask decoder's channels at strides 16, 8, 4 (and 2, if it has that stage) in the
    tracker weights (a file, or its tensors from :func:`read_weights`;
    ``train_tracker.py --decoder-channels`` can train other widths)."""
    state = weights if isinstance(weights, Mapping) else read_weights(weights)
    stages = ("query_projection", "up8.reduce", "up4.reduce", "up2.reduce")
    return tuple(
        int(state[f"mask_decoder.{name}.weight"].shape[0])
        for name in stages
        if f"mask_decoder.{name}.weight" in state
    )


def key_kernel_of(weights: Mapping[str, torch.Tensor]) -> int:
    """The key projection's kernel size in tracker weights (their tensors, from
    :func:`read_weights`): 1, or 3 for weights trained with ``train_tracker.py --key-kernel 3``."""
    return int(weights["key_projection.projection.weight"].shape[-1])


def reads_previous_mask(weights: Mapping[str, torch.Tensor]) -> bool:
    """Whether tracker weights (their tensors, from :func:`read_weights`) were trained to read
    the previous frame's mask (``train_tracker.py --previous-mask``)."""
    return "mask_decoder.previous4.weight" in weights


#: Channels of the default encoder's features at strides 4, 8 and 16.
DEFAULT_CHANNELS = ENCODER_VARIANTS[DEFAULT_VARIANT].channels


def load_frozen(
    module: _Module, path: str | Path, state: Mapping[str, torch.Tensor] | None = None
) -> _Module:
    """Load float16 weights saved by the training scripts (``state``: the file's tensors, if
    already read); eval mode, gradients off."""
    state = read_weights(path) if state is None else state
    try:
        module.load_state_dict({name: value.float() for name, value in state.items()})
    except RuntimeError as error:
        if "size mismatch" not in str(error):
            raise
        raise ValueError(
            f"the weights in {path} were trained on another encoder's features: set "
            "[encoder] variant (tracker weights) or [prompts] encoder (prompt-decoder weights) "
            "to the encoder they were trained with"
        ) from None
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def save_half(module: nn.Module, path: str | Path) -> None:
    """Save the weights as float16 (half the size; inference runs in float32), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    state = module.state_dict()
    torch.save({name: value.detach().half().cpu() for name, value in state.items()}, partial)
    partial.rename(path)


class TrackingNetwork(nn.Module):
    """Key projection + memory encoder + mask decoder, for an encoder with
    ``feature_channels`` at strides 2, 4, 8 and 16."""

    def __init__(
        self,
        feature_channels: Mapping[int, int] = DEFAULT_CHANNELS,
        decoder_channels: tuple[int, ...] = DECODER_CHANNELS,
        previous_mask: bool = False,
        key_kernel: int = 1,
    ) -> None:
        """``feature_channels``: the encoder's channels at strides 2, 4, 8 and 16 (see
        :attr:`EncoderVariant.channels`); ``decoder_channels``: the mask decoder's own at
        strides 16, 8 and 4, and 2 for a stage there; ``previous_mask``: whether the decoder
        reads the object's mask on the previous frame; ``key_kernel``: the key projection's
        kernel size (1 or 3)."""
        super().__init__()
        self.feature_channels = dict(feature_channels)
        self.key_projection = KeyProjection(feature_channels[16], kernel_size=key_kernel)
        self.memory_encoder = MemoryEncoder(feature_channels[16])
        self.mask_decoder = MaskDecoder(
            channels=tuple(decoder_channels),
            feature_channels=tuple(feature_channels[s] for s in (16, 8, 4, 2)),
            previous_mask=previous_mask,
        )

    def segment(
        self,
        query_key: torch.Tensor,
        query16: torch.Tensor,
        features8: torch.Tensor,
        features4: torch.Tensor,
        memory_keys: torch.Tensor,
        memory_values: torch.Tensor,
        features2: torch.Tensor | None = None,
        previous: torch.Tensor | None = None,
    ) -> DecodedMasks:
        """Mask logits (at the decoder's ``output_stride``) and presence logits for a query
        frame, read from memory (and from ``previous``, the mask on the frame before, for a
        decoder that reads it).

        ``query_key`` (N, C, h, w) and ``query16`` (N, 64, h, w, from
        ``mask_decoder.project_query``); ``memory_keys`` (N, C, M) and ``memory_values``
        (N, V, M) flatten every memory frame's cells into M. N batches clips or objects.
        """
        affinity = memory_affinity(query_key, memory_keys)
        readout = read_values(affinity, memory_values, query_key.shape[-2:])
        return self.mask_decoder(readout, query16, features8, features4, features2, previous)

    @classmethod
    def pretrained(
        cls, path: str | Path | None = None, variant: str = DEFAULT_VARIANT
    ) -> TrackingNetwork:
        """The network for encoder ``variant`` with its shipped weights (or those in ``path``,
        trained on that encoder's features), in eval mode, gradients off.

        >>> TrackingNetwork.pretrained(variant="lite2").feature_channels
        {2: 16, 4: 24, 8: 48, 16: 120}
        """
        path = path or tracker_weights_path(variant)
        channels = encoder_variant(variant).channels
        state = read_weights(path)
        network = cls(
            channels, decoder_channels_of(state), reads_previous_mask(state), key_kernel_of(state)
        )
        return load_frozen(network, path, state)
