"""Random-weight checkpoints of each model family, written like downloaded ones: for tests and
benchmarks that must not download anything.

``size="tiny"`` gives a model of about a million parameters on 64 x 64 inputs, which runs the
whole tracking path in milliseconds; ``size="full"`` gives transformers' default configuration
of the family (SAM 2.1 hiera-tiny's architecture for ``sam2``; EdgeTAM's memory attention and
spatial perceiver for ``edgetam``, with the Hiera-tiny image encoder standing in for RepViT,
which needs timm; SAM 3's tracker with its ViT encoder for ``sam3``). Random weights cost the
same time as trained ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

Size = Literal["tiny", "full"]
FAMILY_CONFIGS = {
    "sam2": "Sam2VideoConfig",
    "edgetam": "EdgeTamVideoConfig",
    "sam3": "Sam3TrackerVideoConfig",
}
FAMILY_MODELS = {
    "sam2": "Sam2VideoModel",
    "edgetam": "EdgeTamVideoModel",
    "sam3": "Sam3TrackerVideoModel",
}


def random_model_config(family: str, size: Size = "tiny") -> Any:
    """The transformers config of a random ``family`` model (sam2, edgetam or sam3)."""
    import transformers

    if family not in FAMILY_CONFIGS:
        raise ValueError(f"family must be one of {', '.join(FAMILY_CONFIGS)}, not {family!r}")
    config_class = getattr(transformers, FAMILY_CONFIGS[family])
    if size == "full":
        return config_class()
    if size != "tiny":
        raise ValueError(f"size must be tiny or full, not {size!r}")
    if family == "sam3":
        # ViT with 14-pixel patches: 56 -> 4 x 4 tokens, upsampled to 16, 8 and 4.
        image_size = 56
        backbone = transformers.Sam3ViTConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=14,
            window_size=2,
            global_attn_indexes=[1],
            pretrain_image_size=image_size,
        )
        vision = transformers.Sam3VisionConfig(
            backbone_config=backbone,
            fpn_hidden_size=128,
            backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
        )
        patch_size = 14
    else:
        # Hiera with 4-pixel patches: 64 -> 16 x 16, pooled to 8, 4 and 2. A global-attention
        # block must not open a stage, hence two blocks in the third.
        image_size = 64
        backbone = transformers.Sam2HieraDetConfig(
            hidden_size=8,
            image_size=image_size,
            blocks_per_stage=[1, 1, 2, 1],
            embed_dim_per_stage=[8, 16, 32, 64],
            num_attention_heads_per_stage=[1, 1, 1, 1],
            window_positional_embedding_background_size=[2, 2],
            window_size_per_stage=[4, 4, 4, 2],
            global_attention_blocks=[3],
        )
        vision = transformers.Sam2VisionConfig(
            backbone_config=backbone,
            backbone_channel_list=[64, 32, 16, 8],
            backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
            fpn_hidden_size=128,
        )
        patch_size = 16
    # The memory attention reads 64-channel memories (fixed in transformers) and splits the
    # 128-channel object pointers in two.
    config = config_class(
        vision_config=vision,
        image_size=image_size,
        prompt_encoder_config={
            "hidden_size": 128,
            "image_size": image_size,
            "patch_size": patch_size,
            "mask_input_channels": 4,
        },
        mask_decoder_config={
            "hidden_size": 128,
            "mlp_dim": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 16,
        },
        memory_attention_hidden_size=128,
        memory_attention_num_layers=1,
        memory_attention_rope_feat_sizes=[4, 4],
        memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=32,
    )
    if family == "edgetam":
        config.memory_attention_mlp_hidden_size = 32
        config.perceiver_resampler_num_latents = 16
        config.perceiver_resampler_num_latents_2d = 16
        config.memory_attention_rope_k_sizes = [4, 4]
        config.perceiver_resampler_num_layers = 1
        config.perceiver_resampler_mlp_intermediate_size = 32
    else:
        config.memory_attention_feed_forward_hidden_size = 32
    return config


def save_random_model(
    family: str, directory: str | Path, size: Size = "tiny", seed: int = 0
) -> Path:
    """Write a random-weight ``family`` checkpoint (config.json and model.safetensors only)
    to ``directory/random-<family>`` and return that folder."""
    import torch
    import transformers
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    config = random_model_config(family, size)
    torch.manual_seed(seed)
    model = getattr(transformers, FAMILY_MODELS[family])(config)
    folder = Path(directory) / f"random-{family}"
    model.save_pretrained(folder)
    return folder
