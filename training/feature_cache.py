"""Frozen-encoder features of the DAVIS 2016 train sequences, computed once and cached.

The encoder never trains, so its features for every train frame (and for the frame mirrored
left-right, the one augmentation that needs the encoder) are computed once and kept on disk as
float16: training then only runs the small learned network.

    python training/feature_cache.py                  # writes training/cache/<sequence>-576.pt
    python training/feature_cache.py --long-side 448  # the same at another scale
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from vidseg.engines.builtin.config import BuiltinConfig
from vidseg.engines.builtin.encoder import EfficientNetLite0Encoder, encoder_input_size, normalize
from vidseg.evaluation import read_mask
from vidseg.io import open_frames

DAVIS_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis2016"
CACHE_DIR = Path(__file__).resolve().parent / "cache"


def train_sequences(davis_root: Path) -> list[str]:
    return (davis_root / "ImageSets" / "2016" / "train.txt").read_text().split()


def encode_sequence(
    encoder: EfficientNetLite0Encoder, davis_root: Path, name: str, long_side: int
) -> dict[str, torch.Tensor]:
    """Features at strides 4/8/16 and masks at the encoder's input size, for the frames as they
    are and mirrored: tensors shaped (2, T, ...) with index 0 = original, 1 = mirrored."""
    mask_dir = davis_root / "Annotations" / "480p" / name
    features: dict[str, list[torch.Tensor]] = {"stride4": [], "stride8": [], "stride16": []}
    masks = []
    with open_frames(davis_root / "videos" / f"{name}.mp4") as frames:
        height, width = encoder_input_size(frames.info.height, frames.info.width, long_side)
        for index, frame in enumerate(frames):
            small = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            mask = read_mask(mask_dir / f"{index:05d}.png") > 0
            small_mask = cv2.resize(mask.astype(np.uint8), (width, height), cv2.INTER_NEAREST)
            images = torch.from_numpy(np.stack([small, small[:, ::-1]])).permute(0, 3, 1, 2)
            with torch.inference_mode():
                encoded = encoder(normalize(images.contiguous()))
            for stride_name in features:
                features[stride_name].append(getattr(encoded, stride_name).half())
            masks.append(torch.from_numpy(np.stack([small_mask, small_mask[:, ::-1]])))
    cached = {key: torch.stack(value, 1) for key, value in features.items()}
    cached["masks"] = torch.stack(masks, 1)
    return cached


def build_cache(
    davis_root: Path = DAVIS_ROOT, cache_dir: Path = CACHE_DIR, long_side: int | None = None
) -> list[Path]:
    """Encode every train sequence not cached yet, with the encoder's input scaled to
    ``long_side`` (default: the engine's); return the cache files in train-list order."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    long_side = long_side or BuiltinConfig.load().encoder.long_side
    encoder = EfficientNetLite0Encoder.pretrained()
    paths = []
    for name in tqdm(train_sequences(davis_root), desc="caching features"):
        path = cache_dir / f"{name}-{long_side}.pt"
        if not path.exists():
            partial = path.with_suffix(".partial")
            torch.save(encode_sequence(encoder, davis_root, name, long_side), partial)
            partial.rename(path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis-root", type=Path, default=DAVIS_ROOT)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument(
        "--long-side", type=int, default=None, help="encoder input size (default: the engine's)"
    )
    arguments = parser.parse_args()
    torch.manual_seed(0)
    build_cache(arguments.davis_root, arguments.cache_dir, arguments.long_side)
