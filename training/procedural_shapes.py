"""Procedurally drawn frames for the prompt decoder: textured shapes over textured
backgrounds, encoded once into the feature cache like a train sequence.

DAVIS train has 30 sequences of natural objects; a decoder trained on them alone learns what
salient objects there look like, and misses shapes unlike them (striped or boxed shapes on
plain backgrounds: see training/README.md). These frames hold two to five shapes (ellipses,
polygons, stars, blobs) filled with flat colour, stripes, checks, gradients or noise, some
overlapping, over a texture cluttered with smaller shapes; the target is one shape's visible
part, so that only the prompt tells which shape is meant. Nothing comes from DAVIS, so the
frames hold nothing of the sequences a hold-out run leaves out.

This generator is deliberately not the one of ``vidseg demo`` (``vidseg.demo.synthetic``):
the demo's clip stays a check of content the decoder was not trained on.

    python training/procedural_shapes.py    # writes training/cache/procedural-<k>-576.pt
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from feature_cache import CACHE_DIR, cache_path, encode_frames, save_cache
from tqdm import tqdm

from vidseg.engines.builtin.config import BuiltinConfig
from vidseg.engines.builtin.encoder import EfficientNetLiteEncoder, encoder_input_size

FRAMES_PER_SEQUENCE = 150


def texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random RGB float texture in [0, 255]: flat, stripes, checks, gradient or noise."""
    colours = rng.uniform(0, 255, (2, 3))
    kind = rng.integers(5)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 0:
        weight = np.zeros((height, width), np.float32)
    elif kind == 1:  # stripes at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
        phase = (xs * np.cos(angle) + ys * np.sin(angle)) / period
        weight = (np.sin(2 * np.pi * phase) > 0).astype(np.float32)
    elif kind == 2:  # checks
        cell = rng.uniform(6, 40)
        weight = ((xs // cell + ys // cell) % 2).astype(np.float32)
    elif kind == 3:  # linear gradient
        angle = rng.uniform(0, 2 * np.pi)
        ramp = xs * np.cos(angle) + ys * np.sin(angle)
        weight = (ramp - ramp.min()) / max(np.ptp(ramp), 1.0)
    else:  # smooth noise
        small = rng.random((max(2, height // 24), max(2, width // 24))).astype(np.float32)
        weight = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    image = colours[0] * (1 - weight[..., None]) + colours[1] * weight[..., None]
    return image + rng.normal(0, rng.uniform(0, 8), image.shape)


def shape_mask(
    rng: np.random.Generator, height: int, width: int, scale: float | None = None
) -> np.ndarray:
    """A random filled shape (ellipse, polygon, star or blob) somewhere in the frame, its
    radius ``scale`` (a random 10% to 40% by default) of the frame's short side."""
    size = (scale or rng.uniform(0.1, 0.4)) * min(height, width)
    centre = rng.uniform([0.1 * width, 0.1 * height], [0.9 * width, 0.9 * height])
    mask = np.zeros((height, width), np.uint8)
    kind = rng.integers(4)
    if kind == 0:
        axes = (int(size * rng.uniform(0.3, 1.0)), int(size * rng.uniform(0.3, 1.0)))
        cv2.ellipse(mask, tuple(int(c) for c in centre), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    elif kind in (1, 2):
        count = int(rng.integers(3, 9)) * (2 if kind == 2 else 1)
        angles = np.sort(rng.uniform(0, 2 * np.pi, count)) if kind == 1 else None
        if kind == 2:  # a star: radii alternate between outer and inner
            angles = np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, np.pi)
        radii = size * rng.uniform(0.5, 1.0, count)
        if kind == 2:
            radii[1::2] *= rng.uniform(0.3, 0.6)
        points = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    else:  # a blob: thresholded smooth noise around the centre
        field = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), size / 6)
        ys, xs = np.mgrid[0:height, 0:width]
        falloff = np.hypot(xs - centre[0], ys - centre[1]) / size
        score = (field - field.mean()) / max(field.std(), 1e-6) - 2.5 * falloff
        mask[score > -1.0] = 1
    return mask > 0


def draw_frame(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """A frame (RGB uint8) of shapes over a cluttered texture and the visible mask of one of
    them, or None when no shape shows enough of itself."""
    image = texture(rng, height, width)
    for _ in range(int(rng.integers(0, 7))):  # clutter, never a target
        clutter = shape_mask(rng, height, width, rng.uniform(0.02, 0.08))
        image[clutter] = texture(rng, height, width)[clutter]
    labels = np.zeros((height, width), np.int32)
    for index in range(1, int(rng.integers(2, 6)) + 1):
        mask = shape_mask(rng, height, width)
        shaded = texture(rng, height, width)
        # Soft edges, as anti-aliased or blurred objects have.
        alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), rng.uniform(0.5, 1.5))
        image = image * (1 - alpha[..., None]) + shaded * alpha[..., None]
        labels[alpha >= 0.5] = index
    areas = np.bincount(labels.ravel(), minlength=labels.max() + 1)[1:]
    shown = np.flatnonzero(areas >= 0.01 * height * width) + 1
    if not len(shown):
        return None
    target = labels == rng.choice(shown)
    return np.clip(image, 0, 255).astype(np.uint8), target


def encode_procedural(
    encoder: EfficientNetLiteEncoder, seed: int, long_side: int
) -> dict[str, torch.Tensor]:
    """:data:`FRAMES_PER_SEQUENCE` procedural frames with their target masks, at a DAVIS
    frame's input size, encoded as the train sequences are (``feature_cache.encode_frames``)."""
    rng = np.random.default_rng([seed, 7])
    height, width = encoder_input_size(480, 854, long_side)

    def drawn_frames() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        count = 0
        while count < FRAMES_PER_SEQUENCE:
            drawn = draw_frame(rng, height, width)
            if drawn is not None:
                count += 1
                yield drawn

    return encode_frames(encoder, drawn_frames())


def build_procedural_cache(
    count: int,
    cache_dir: Path = CACHE_DIR,
    long_side: int | None = None,
    encoder_name: str | None = None,
) -> list[Path]:
    """``count`` cached sequences of procedural frames (built if missing) encoded by
    ``encoder_name`` (default: the engine's), as paths that ``train_tracker.load_sequences``
    reads like the train sequences'."""
    defaults = BuiltinConfig.load().encoder
    long_side = long_side or defaults.long_side
    encoder_name = encoder_name or defaults.variant
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        cache_path(cache_dir, f"procedural-{seed}", long_side, encoder=encoder_name)
        for seed in range(count)
    ]
    if not all(path.exists() for path in paths):  # else no need to load the encoder
        encoder = EfficientNetLiteEncoder.pretrained(encoder_name)
        for seed, path in enumerate(tqdm(paths, desc="procedural frames")):
            save_cache(path, lambda seed=seed: encode_procedural(encoder, seed, long_side))
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=4, help="sequences of 150 frames")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    arguments = parser.parse_args()
    build_procedural_cache(arguments.count, arguments.cache_dir)
