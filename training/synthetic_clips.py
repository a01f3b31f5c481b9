"""Synthetic training sequences: train objects pasted, in pixels, onto other train sequences.

The tracker trains on cached frozen-encoder features, so augmentation that changes the
image (new backgrounds, scales, colours, objects crossing) has to happen before the encoder.
This composes short sequences once, in the spirit of STM's pre-training on static images and
of "objects pasted between sequences": one train sequence's object, cut out along its mask
from its own frames (moving and deforming as it really does; or one frame only, a
static-image sequence), is warped by a drifting affine motion onto another sequence's frames,
recoloured, sometimes with a third sequence's object crossing in front of it or behind it.
The composites are encoded like the real frames (:func:`feature_cache.encode_frames`) and
cached in chunks that ``train_tracker.py --synthetic-sequences N`` reads beside the real
sequences. Only the sequences given (a hold-out run's training part) are used.

    python training/synthetic_clips.py --sequences 600   # about 5 minutes, 3 GB per 300
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from feature_cache import (
    CACHE_DIR,
    DAVIS_ROOT,
    encode_frames,
    photometric_jitter,
    read_sequence,
    save_cache,
    train_sequences,
)
from tqdm import tqdm

from vidseg.engines.builtin.config import BuiltinConfig
from vidseg.engines.builtin.encoder import ENCODER_VARIANTS, EfficientNetLiteEncoder

#: Frames per synthetic sequence, and its size: the training crop (16 x 28 stride-16 cells).
SYNTHETIC_FRAMES = 8
SYNTHETIC_SIZE = (256, 448)
#: Sequences per cache file (about 1.2 GB with Lite2 features, mirrored copies included).
CHUNK = 100
#: Frames are read at this long side before compositing (objects are then scaled anyway).
SOURCE_LONG_SIDE = 576


@dataclass
class SourceSequence:
    """A train sequence's frames (RGB uint8) and masks (bool), at ``SOURCE_LONG_SIDE``."""

    name: str
    frames: np.ndarray  # (T, H, W, 3)
    masks: np.ndarray  # (T, H, W)


def load_source(davis_root: Path, name: str) -> SourceSequence:
    frames, masks = [], []
    for frame, mask in read_sequence(davis_root, name):
        height, width = frame.shape[:2]
        scale = SOURCE_LONG_SIDE / max(height, width)
        size = (round(width * scale), round(height * scale))
        frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
        masks.append(cv2.resize(mask.astype(np.uint8), size, cv2.INTER_NEAREST) > 0)
    return SourceSequence(name, np.stack(frames), np.stack(masks))


def _frame_indices(length: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` frame indices of a ``length``-frame sequence: one frame repeated (30%: a
    static image), or consecutive frames at a step of 1 to 3, forwards or backwards."""
    if rng.random() < 0.3:
        return np.full(count, rng.integers(length))
    step = int(rng.integers(1, 4))
    step = max(1, min(step, (length - 1) // (count - 1)))
    start = int(rng.integers(0, length - step * (count - 1)))
    indices = start + step * np.arange(count)
    return indices[::-1].copy() if rng.random() < 0.5 else indices


def _object_motion(
    mask: np.ndarray, count: int, rng: np.random.Generator, size: tuple[int, int]
) -> list[np.ndarray]:
    """Per frame, a 2x3 affine taking source pixels to the canvas: the object's box centre
    to a drifting point, scaled so the box is 20-80% of the canvas height (at most 90% of
    its width), turned by a drifting angle."""
    height, width = size
    rows, cols = np.nonzero(mask)
    centre = np.array([(cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2])
    box_high, box_wide = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    scale = rng.uniform(0.2, 0.8) * height / box_high
    scale = min(scale, 0.9 * width / box_wide)
    position = np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.25, 0.75) * height])
    velocity = rng.uniform(-8, 8, 2)
    angle, spin = rng.uniform(-10, 10), rng.uniform(-3, 3)
    growth = rng.uniform(-0.03, 0.03)
    motions = []
    for _ in range(count):
        rotation = cv2.getRotationMatrix2D((0.0, 0.0), angle, scale)
        shift = position - rotation[:, :2] @ centre
        motions.append(np.hstack([rotation[:, :2], shift[:, None]]))
        position = position + velocity + rng.normal(0, 2, 2)
        angle, scale = angle + spin, scale * (1 + growth)
    return motions


def _background(
    source: SourceSequence, count: int, rng: np.random.Generator, size: tuple[int, int]
) -> np.ndarray:
    """``count`` frames of ``source`` (:func:`_frame_indices`), zoomed 1-1.6x past covering
    the canvas and cropped through a window that pans."""
    height, width = size
    frames = source.frames[_frame_indices(len(source.frames), count, rng)]
    zoom = max(height / frames.shape[1], width / frames.shape[2]) * rng.uniform(1.0, 1.6)
    zoomed_high, zoomed_wide = int(frames.shape[1] * zoom), int(frames.shape[2] * zoom)
    corner = np.array([rng.uniform(0, zoomed_wide - width), rng.uniform(0, zoomed_high - height)])
    pan = rng.uniform(-4, 4, 2)
    out = []
    for frame in frames:
        zoomed = cv2.resize(frame, (zoomed_wide, zoomed_high), interpolation=cv2.INTER_LINEAR)
        x, y = np.clip(corner, 0, [zoomed_wide - width, zoomed_high - height]).astype(int)
        out.append(zoomed[y : y + height, x : x + width])
        corner = corner + pan
    return np.stack(out)


def _pasted_object(
    source: SourceSequence, count: int, rng: np.random.Generator, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray] | None:
    """A moving object of ``source`` on the canvas: per frame its colours (H, W, 3, float32)
    and soft alpha (H, W) in [0, 1]; None if the source frame shows no object."""
    indices = _frame_indices(len(source.frames), count, rng)
    if not source.masks[indices[0]].any():
        return None
    height, width = size
    motions = _object_motion(source.masks[indices[0]], count, rng, size)
    colours, alphas = [], []
    for index, motion in zip(indices, motions, strict=True):
        colour = cv2.warpAffine(
            source.frames[index], motion, (width, height), flags=cv2.INTER_LINEAR
        )
        alpha = cv2.warpAffine(
            source.masks[index].astype(np.float32), motion, (width, height), flags=cv2.INTER_LINEAR
        )
        # A pixel-wide soft edge, as a real object's boundary is blurred by the camera.
        colours.append(colour.astype(np.float32))
        alphas.append(cv2.GaussianBlur(alpha, (0, 0), 0.7))
    return np.stack(colours), np.stack(alphas)


def compose_sequence(
    sources: list[SourceSequence],
    rng: np.random.Generator,
    count: int = SYNTHETIC_FRAMES,
    size: tuple[int, int] = SYNTHETIC_SIZE,
) -> tuple[np.ndarray, np.ndarray] | None:
    """One synthetic sequence: frames (count, H, W, 3) uint8 and the target's masks (count,
    H, W) bool. The target comes from one of ``sources``, the background from another; half
    the time a third source's object crosses, in front of the target (which loses what it
    covers) or behind it. Half the sequences are recoloured, one look for all frames. None
    when the draw leaves the target unseen in the first frame."""
    picks = rng.choice(len(sources), size=3, replace=len(sources) < 3)
    target = _pasted_object(sources[picks[0]], count, rng, size)
    if target is None:
        return None
    frames = _background(sources[picks[1]], count, rng, size).astype(np.float32)
    layers = [target]
    distractor = _pasted_object(sources[picks[2]], count, rng, size) if rng.random() < 0.5 else None
    in_front = distractor is not None and rng.random() < 0.5
    if distractor is not None:
        layers.insert(1 if in_front else 0, distractor)
    for colour, alpha in layers:
        frames = alpha[..., None] * colour + (1 - alpha[..., None]) * frames
    masks = target[1] > 0.5
    if in_front:
        masks &= distractor[1] <= 0.5
    if masks[0].sum() < 64:
        return None
    frames = np.clip(frames, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        look = int(rng.integers(2**31))
        frames = np.stack(
            [photometric_jitter(frame, np.random.default_rng(look)) for frame in frames]
        )
    return frames, masks


def synthetic_cache_paths(
    cache_dir: Path, names: list[str], count: int, encoder: str, seed: int = 0
) -> list[Path]:
    """Where ``count`` synthetic sequences composed from ``names`` are cached, CHUNK to a
    file; the file names carry a digest of ``names``, so a hold-out run never reads
    composites of its held-out sequences."""
    digest = hashlib.sha1(" ".join(sorted(names)).encode()).hexdigest()[:8]
    chunks = -(-count // CHUNK)
    return [
        cache_dir / f"synthetic-{encoder}-{digest}-seed{seed}-{chunk:03d}.pt"
        for chunk in range(chunks)
    ]


def build_synthetic_cache(
    names: list[str],
    count: int,
    davis_root: Path = DAVIS_ROOT,
    cache_dir: Path = CACHE_DIR,
    encoder_name: str | None = None,
    seed: int = 0,
) -> list[Path]:
    """Compose and encode ``count`` synthetic sequences from the train sequences ``names`` (a
    multiple of CHUNK is cached; existing chunks are kept). Each chunk holds the layout of
    a real sequence's cache file (:func:`feature_cache.encode_frames`) for CHUNK sequences of
    SYNTHETIC_FRAMES frames one after another; returns the chunk files."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    encoder_name = encoder_name or BuiltinConfig.load().encoder.variant
    paths = synthetic_cache_paths(cache_dir, names, count, encoder_name, seed)
    missing = [path for path in paths if not path.exists()]
    if not missing:
        return paths
    sources = [load_source(davis_root, name) for name in tqdm(names, desc="reading sequences")]
    encoder = EfficientNetLiteEncoder.pretrained(encoder_name)
    for chunk, path in enumerate(tqdm(paths, desc="synthetic sequences")):
        rng = np.random.default_rng([seed, chunk])

        def composed(rng: np.random.Generator = rng):
            made = 0
            while made < CHUNK:
                sequence = compose_sequence(sources, rng)
                if sequence is None:
                    continue
                made += 1
                yield from zip(*sequence, strict=True)

        save_cache(path, lambda: encode_frames(encoder, composed()))
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis-root", type=Path, default=DAVIS_ROOT)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--sequences", type=int, default=600, help="how many to compose")
    parser.add_argument(
        "--encoder", choices=list(ENCODER_VARIANTS), help="default: the engine's [encoder] variant"
    )
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    torch.manual_seed(0)
    build_synthetic_cache(
        train_sequences(arguments.davis_root),
        arguments.sequences,
        arguments.davis_root,
        arguments.cache_dir,
        arguments.encoder,
        arguments.seed,
    )
