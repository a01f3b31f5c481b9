"""Frozen-encoder features of the DAVIS 2016 train sequences, computed once and cached.

The encoder never trains, so its features for every train frame (and for the frame mirrored
left-right, the one augmentation that needs the encoder) are computed once and kept on disk as
float16: training then only runs the small learned network.

    python training/feature_cache.py                  # writes training/cache/<sequence>-576.pt
    python training/feature_cache.py --long-side 448  # the same at another scale
    python training/feature_cache.py --photometric 1  # <sequence>-576-photo1.pt: recoloured,
                                                      # blurred, noisy and JPEG-compressed frames
    python training/feature_cache.py --photometric 1 --per-sequence  # <sequence>-576-look1.pt:
                                                      # one such look for the whole sequence
    python training/feature_cache.py --encoder lite2  # <sequence>-576-lite2.pt: another encoder
    python training/feature_cache.py --stride2        # and <sequence>-576-lite2-stride2.pt: the
                                                      # stride-2 features too (6 GB for Lite2)
"""

from __future__ import annotations

import argparse
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from vidseg.engines.builtin.config import BuiltinConfig
from vidseg.engines.builtin.encoder import (
    ENCODER_VARIANTS,
    EfficientNetLiteEncoder,
    encoder_input_size,
    normalize,
)
from vidseg.evaluation import read_mask
from vidseg.io import open_frames

DAVIS_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis2016"
CACHE_DIR = Path(__file__).resolve().parent / "cache"


def train_sequences(davis_root: Path) -> list[str]:
    return (davis_root / "ImageSets" / "2016" / "train.txt").read_text().split()


def read_sequence(davis_root: Path, name: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A train sequence's frames (RGB uint8) and masks (bool), as stored (the frames from its
    mp4, one mask PNG per frame)."""
    mask_dir = davis_root / "Annotations" / "480p" / name
    with open_frames(davis_root / "videos" / f"{name}.mp4") as frames:
        for index, frame in enumerate(frames):
            yield frame, read_mask(mask_dir / f"{index:05d}.png") > 0


def photometric_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A randomly re-photographed RGB uint8 frame: brightness, contrast, saturation, hue and
    gamma changed, then, each with a 30% chance, Gaussian blur, sensor noise and JPEG
    compression. The object does not move, so the frame's mask still holds. This is the
    colour augmentation that a frozen encoder with cached features otherwise rules out."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6)) % 180  # OpenCV hue: 0..180
    hsv[..., 1] *= rng.uniform(0.5, 1.5)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    out = out.astype(np.float32) / 255
    out = (out - out.mean()) * rng.uniform(0.6, 1.4) + out.mean() * rng.uniform(0.6, 1.4)
    out = np.clip(out, 0, 1) ** rng.uniform(0.7, 1.4) * 255
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 2.0))
    if rng.random() < 0.3:
        out = out + rng.normal(0, rng.uniform(2, 10), out.shape)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        quality = int(rng.integers(15, 60))
        _, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
        out = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    return out


def cache_path(
    cache_dir: Path,
    name: str,
    long_side: int,
    photometric: int = 0,
    per_sequence: bool = False,
    encoder: str = "lite0",
) -> Path:
    """Where a sequence's features are cached: ``<name>-<long side>.pt``, and
    ``<name>-<long side>-photo<k>.pt`` for its ``k``-th photometric variant (``-look<k>.pt``
    when the variant is one look for the whole sequence); ``-<encoder>`` is added for encoders
    other than Lite0 (``bear-576-lite2.pt``)."""
    suffix = f"-{'look' if per_sequence else 'photo'}{photometric}" if photometric else ""
    if encoder != "lite0":
        suffix += f"-{encoder}"
    return cache_dir / f"{name}-{long_side}{suffix}.pt"


#: What a sequence's cache file holds; its stride-2 features live in a companion file
#: (:func:`stride2_path`), as only decoders with a stride-2 stage read them.
CACHED = ("stride4", "stride8", "stride16", "masks")


def stride2_path(path: Path) -> Path:
    """The companion of the cache file ``path`` holding the same frames' stride-2 features."""
    return path.with_name(f"{path.stem}-stride2.pt")


def encode_frames(
    encoder: EfficientNetLiteEncoder,
    frames: Iterable[tuple[np.ndarray, np.ndarray]],
    names: tuple[str, ...] = CACHED,
) -> dict[str, torch.Tensor]:
    """Features at strides 4/8/16 (float16) and masks (uint8) of (RGB frame, boolean mask)
    pairs already at the encoder's input size, as they are and mirrored: tensors shaped
    (2, T, ...) with index 0 = original, 1 = mirrored. The layout of every cache file.
    ``names`` picks what to keep (``"stride2"`` for a companion file)."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for image, mask in frames:
        images = torch.from_numpy(np.stack([image, image[:, ::-1]])).permute(0, 3, 1, 2)
        with torch.inference_mode():
            encoded = encoder(normalize(images.contiguous()))
        for name in names:
            if name == "masks":
                mask = mask.astype(np.uint8)
                parts[name].append(torch.from_numpy(np.stack([mask, mask[:, ::-1]])))
            else:
                parts[name].append(getattr(encoded, name).half())
    return {name: torch.stack(value, 1) for name, value in parts.items()}


def save_cache(path: Path, encode: Callable[[], dict[str, torch.Tensor]]) -> None:
    """Write ``encode()`` to ``path`` unless it is there, under a temporary name until
    complete (an interrupted run leaves no half-written cache file)."""
    if path.exists():
        return
    partial = path.with_suffix(".partial")
    torch.save(encode(), partial)
    partial.rename(path)


def encode_sequence(
    encoder: EfficientNetLiteEncoder,
    davis_root: Path,
    name: str,
    long_side: int,
    photometric: int = 0,
    per_sequence: bool = False,
    names: tuple[str, ...] = CACHED,
) -> dict[str, torch.Tensor]:
    """A train sequence's frames and masks at the encoder's input size, encoded by
    :func:`encode_frames` (keeping ``names``). With ``photometric`` = k > 0, each frame first
    goes through :func:`photometric_jitter`, drawn from a generator seeded by k and the
    sequence's name: anew per frame, or with ``per_sequence`` the same draw for every frame
    (one camera's look: the frames change together, so the memory and the query still look
    alike)."""
    seed = [photometric, zlib.crc32(name.encode())]
    rng = np.random.default_rng(seed)

    def resized() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for frame, mask in read_sequence(davis_root, name):
            height, width = encoder_input_size(*frame.shape[:2], long_side)
            small = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            if photometric:
                small = photometric_jitter(
                    small, np.random.default_rng(seed) if per_sequence else rng
                )
            yield small, cv2.resize(mask.astype(np.uint8), (width, height), cv2.INTER_NEAREST)

    return encode_frames(encoder, resized(), names)


def build_cache(
    davis_root: Path = DAVIS_ROOT,
    cache_dir: Path = CACHE_DIR,
    long_side: int | None = None,
    photometric: int = 0,
    per_sequence: bool = False,
    encoder_name: str | None = None,
    stride2: bool = False,
) -> list[Path]:
    """Encode every train sequence not cached yet by the encoder ``encoder_name`` (default: the
    engine's), its input scaled to ``long_side`` (default: the engine's), and re-photographed
    by :func:`photometric_jitter` for ``photometric`` > 0 (the variant's number; per frame, or
    ``per_sequence``); with ``stride2``, its stride-2 features too (:func:`stride2_path`).
    Return the cache files in train-list order."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    defaults = BuiltinConfig.load().encoder
    long_side = long_side or defaults.long_side
    encoder_name = encoder_name or defaults.variant
    encoder = EfficientNetLiteEncoder.pretrained(encoder_name)
    paths = []
    for name in tqdm(train_sequences(davis_root), desc="caching features"):
        path = cache_path(cache_dir, name, long_side, photometric, per_sequence, encoder_name)
        # Each file and what it keeps; a sequence is encoded once for all that are missing.
        files = {path: CACHED, **({stride2_path(path): ("stride2",)} if stride2 else {})}
        missing = {file: names for file, names in files.items() if not file.exists()}
        if missing:
            kept = tuple(name for names in missing.values() for name in names)
            features = encode_sequence(
                encoder, davis_root, name, long_side, photometric, per_sequence, kept
            )
            for file, names in missing.items():
                save_cache(
                    file, lambda names=names, features=features: {k: features[k] for k in names}
                )
        paths.append(path)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis-root", type=Path, default=DAVIS_ROOT)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument(
        "--long-side", type=int, default=None, help="encoder input size (default: the engine's)"
    )
    parser.add_argument(
        "--photometric",
        type=int,
        default=0,
        metavar="K",
        help="cache photometric variant K (> 0) of every frame instead of the frames as they are",
    )
    parser.add_argument(
        "--per-sequence",
        action="store_true",
        help="with --photometric, one look for all of a sequence's frames, not one per frame",
    )
    parser.add_argument(
        "--encoder", choices=list(ENCODER_VARIANTS), help="default: the engine's [encoder] variant"
    )
    parser.add_argument(
        "--stride2",
        action="store_true",
        help="cache the stride-2 features too (for mask decoders with a stride-2 stage)",
    )
    arguments = parser.parse_args()
    torch.manual_seed(0)
    build_cache(
        arguments.davis_root,
        arguments.cache_dir,
        arguments.long_side,
        arguments.photometric,
        arguments.per_sequence,
        arguments.encoder,
        arguments.stride2,
    )
