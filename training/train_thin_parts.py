"""Train the thin-part refiner (``src/vidseg/engines/builtin/thin_parts.py``).

1. Tracker outputs, cached per sequence in ``training/cache/thin_parts/``: each DAVIS 2016
   train sequence tracked from its first frame's mask by the engine (its shipped networks, or
   ``--tracker-weights``), and its full-resolution probability on every frame kept (uint8).
   These show what the refiner corrects: thin parts lost at the tracker's stride-4 grid.
2. Training: a sample is a frame whose object had thin parts on the frame before. The
   refiner reads the frame, the tracker's probability there and the object's mask on a frame
   before (the true mask of 1 to 3 frames back, shifted by up to 3 px, some of its thin parts
   dropped: as at inference, where it is the last refined mask), in a crop of the band around
   that mask's thin parts; it is supervised inside the band only (cross-entropy plus Dice),
   where the engine uses it. Crops are mirrored at random and recoloured.

    python training/train_thin_parts.py     # writes the shipped weights/thin_parts.pt
    python training/train_thin_parts.py --hold-out 3 4 --output /tmp/thin_hold34.pt
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from feature_cache import photometric_jitter, read_sequence, train_sequences
from train_tracker import fit_and_save, held_out_folds, training_arguments, without_held_out

from vidseg.engines.builtin import BuiltinConfig, BuiltinEngine
from vidseg.engines.builtin.mask_refiner import MaskRefiner
from vidseg.engines.builtin.network import thin_parts_weights_path
from vidseg.engines.builtin.thin_parts import (
    THIN_PART_INPUTS,
    probability_logit,
    thin_part_band,
    thin_part_input,
    thin_parts,
)
from vidseg.io import VideoInfo

# Farthest frame back the "previous" mask is taken from, and how likely each distance is.
_PREVIOUS_DISTANCES = (1, 2, 3)
_PREVIOUS_WEIGHTS = (0.6, 0.25, 0.15)
_MAX_SHIFT = 3
_DROP_PART = 0.2  # each thin part of the previous mask is left out with this chance


@dataclass
class TrackedSequence:
    """A train sequence's frames, true masks and the tracker's probabilities (uint8, 0-255)."""

    name: str
    frames: np.ndarray
    masks: np.ndarray
    probabilities: np.ndarray


def tracker_probabilities(
    engine: BuiltinEngine, frames: np.ndarray, first_mask: np.ndarray
) -> np.ndarray:
    """(frames, H, W) uint8: the tracker's probability on each frame, tracked forward from
    ``first_mask`` as a session does (an object judged absent is remembered empty)."""
    height, width = first_mask.shape
    info = VideoInfo(width=width, height=height, num_frames=len(frames), fps=30.0)
    tracker = engine.new_tracker(info)
    tracker.remember(0, frames[0], {1: first_mask}, prompted=True)
    out = np.zeros((len(frames), height, width), np.uint8)
    out[0] = first_mask * 255
    for index in range(1, len(frames)):
        prediction = tracker.predict(index, frames[index])[1]
        out[index] = np.round(prediction.probability * 255)
        mask = (prediction.probability >= 0.5) & (prediction.presence >= 0.5)
        tracker.remember(index, frames[index], {1: mask}, prompted=False)
    return out


def tracked_sequence(
    arguments: argparse.Namespace, engine: BuiltinEngine, name: str
) -> TrackedSequence:
    pairs = list(read_sequence(arguments.davis_root, name))
    frames, masks = np.stack([f for f, _ in pairs]), np.stack([m for _, m in pairs])
    # Named by the networks' bytes, so that retrained weights never meet stale outputs.
    digest = hashlib.sha1()
    for weights in engine.config.tracker.weights_files(engine.config.encoder.variant):
        digest.update(Path(weights).read_bytes())
    tag = digest.hexdigest()[:8]
    path = arguments.cache_dir / "thin_parts" / f"{name}-{tag}.npz"
    if path.exists():
        probabilities = np.load(path)["probabilities"]
    else:
        probabilities = tracker_probabilities(engine, frames, masks[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npz")
        np.savez_compressed(partial, probabilities=probabilities)
        partial.rename(path)
        print(f"tracked {name}", flush=True)
    return TrackedSequence(name, frames, masks, probabilities)


def previous_mask(
    sequence: TrackedSequence, index: int, rng: np.random.Generator, distance: int | None = None
) -> np.ndarray:
    """A stand-in for the refined mask of the frame before ``index``: a true mask of a frame
    shortly before (or ``distance`` frames before), shifted, with some of its thin parts
    dropped."""
    if distance is None:
        distance = int(rng.choice(_PREVIOUS_DISTANCES, p=_PREVIOUS_WEIGHTS))
    mask = sequence.masks[max(0, index - distance)]
    dx, dy = rng.integers(-_MAX_SHIFT, _MAX_SHIFT + 1, size=2)
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    mask = cv2.warpAffine(mask.astype(np.uint8), shift, mask.shape[::-1], flags=cv2.INTER_NEAREST)
    mask = mask > 0
    count, labels = cv2.connectedComponents(thin_parts(mask).astype(np.uint8))
    dropped = [part for part in range(1, count) if rng.random() < _DROP_PART]
    if dropped:
        mask &= ~np.isin(labels, dropped)
    return mask


def _curve(start: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(20, 2) points of a gently bent line from ``start``, 60-400 px long, any direction."""
    angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(60, 400)
    end = start + length * np.array([np.cos(angle), np.sin(angle)])
    bend = rng.uniform(-0.15, 0.15) * length * np.array([-np.sin(angle), np.cos(angle)])
    steps = np.linspace(0, 1, 20)[:, None]
    control = (start + end) / 2 + bend
    return (1 - steps) ** 2 * start + 2 * steps * (1 - steps) * control + steps**2 * end


def _draw(shape: tuple[int, int], points: np.ndarray, width: int) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    cv2.polylines(canvas, [np.round(points).astype(np.int32)], False, 1, width, cv2.LINE_8)
    return canvas > 0


def with_synthetic_lines(
    frame: np.ndarray,
    truth: np.ndarray,
    previous: np.ndarray,
    rng: np.random.Generator,
    prompt: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(frame, truth, previous mask) with 1-4 thin lines (ropes, strings, lines of any colour
    and contrast, 1-3 px wide) leaving the object from its border: drawn in the frame and
    the truth, and in the previous mask a few pixels away (the line moved); half the time
    also a line elsewhere in the frame that is not the object's (a pole, a wire)."""
    border = truth & ~(cv2.erode(truth.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    rows, cols = np.nonzero(border)
    if len(rows) == 0:
        return frame, truth, previous, prompt
    frame, truth, previous = frame.astype(np.float32), truth.copy(), previous.copy()
    prompt = None if prompt is None else prompt.copy()
    height, width = truth.shape
    lines = [(True, int(rng.integers(1, 5)))] + [(False, 1)] * int(rng.random() < 0.5)
    for attached, count in lines:
        for _ in range(count):
            if attached:
                pick = int(rng.integers(len(rows)))
                start = np.array([cols[pick], rows[pick]], np.float64)
            else:
                start = rng.uniform([0, 0], [width, height])
            points = _curve(start, rng)
            line_width = int(rng.choice([1, 1, 2, 2, 3]))
            drawn = _draw((height, width), points, line_width)
            dark = rng.random() < 0.5
            colour = rng.uniform(0, 90, 3) if dark else rng.uniform(160, 255, 3)
            opacity = rng.uniform(0.35, 1.0)
            frame[drawn] = (1 - opacity) * frame[drawn] + opacity * colour
            if attached:
                truth |= drawn
                moved = points + rng.uniform(-4, 4, 2) * np.linspace(0.2, 1, 20)[:, None]
                previous |= _draw((height, width), moved, line_width)
                if prompt is not None:  # further back, moved further
                    moved = points + rng.uniform(-12, 12, 2) * np.linspace(0.2, 1, 20)[:, None]
                    prompt |= _draw((height, width), moved, line_width)
    return np.clip(frame, 0, 255).astype(np.uint8), truth, previous, prompt


def samples_of(sequence: TrackedSequence, min_share: float) -> list[int]:
    """The frames whose object had thin parts (by the engine's rule) on the frame before."""
    return [
        index
        for index in range(1, len(sequence.frames))
        if thin_part_band(sequence.masks[index - 1], min_share) is not None
    ]


def crop_example(
    sequence: TrackedSequence,
    index: int,
    size: int,
    min_share: float,
    rng: np.random.Generator,
    synthetic: bool = False,
    prompt_input: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(refiner input, coarse logit, true mask, band) of a ``size``-pixel crop around a
    random pixel of the band, with ``synthetic`` lines added to the object
    (:func:`with_synthetic_lines`); None when the drawn previous mask leaves no band."""
    previous = previous_mask(sequence, index, rng)
    prompt = None
    if prompt_input:  # the prompt: a true mask up to 60 frames back
        prompt = previous_mask(sequence, index, rng, int(rng.integers(1, 61)))
    frame, truth = sequence.frames[index], sequence.masks[index]
    if synthetic:
        frame, truth, previous, prompt = with_synthetic_lines(frame, truth, previous, rng, prompt)
    band = thin_part_band(previous, min_share)
    if prompt is not None:
        prompt_band = thin_part_band(prompt, min_share)
        if prompt_band is not None:
            band = prompt_band if band is None else band | prompt_band
    if band is None:
        return None
    probability = sequence.probabilities[index].astype(np.float32) / 255
    if rng.random() < 0.5:
        frame, truth, probability = frame[:, ::-1], truth[:, ::-1], probability[:, ::-1]
        previous, band = previous[:, ::-1], band[:, ::-1]
        prompt = None if prompt is None else prompt[:, ::-1]
    height, width = truth.shape
    rows, cols = np.nonzero(band)
    pick = int(rng.integers(len(rows)))
    top = int(np.clip(rows[pick] - size // 2, 0, height - size))
    left = int(np.clip(cols[pick] - size // 2, 0, width - size))
    window = (slice(top, top + size), slice(left, left + size))
    image = photometric_jitter(np.ascontiguousarray(frame[window]), rng)
    crop_probability = np.ascontiguousarray(probability[window])
    inputs = thin_part_input(
        image,
        crop_probability,
        np.ascontiguousarray(previous[window]),
        None if prompt is None else np.ascontiguousarray(prompt[window]),
    )
    coarse = probability_logit(crop_probability)[None]
    target = torch.from_numpy(np.ascontiguousarray(truth[window])).float()[None]
    weight = torch.from_numpy(np.ascontiguousarray(band[window])).float()[None]
    return inputs[0], coarse, target, weight


def band_loss(logit: torch.Tensor, target: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice, both over the band's pixels only."""
    pixels = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    cross_entropy = (pixels * band).sum() / band.sum().clamp(min=1)
    probability = torch.sigmoid(logit) * band
    target = target * band
    overlap = (probability * target).flatten(1).sum(1)
    total = probability.flatten(1).sum(1) + target.flatten(1).sum(1)
    dice = 1 - (2 * overlap + 1) / (total + 1)
    return cross_entropy + dice.mean()


def train(arguments: argparse.Namespace) -> None:
    torch.manual_seed(arguments.seed)
    torch.set_num_threads(arguments.threads)
    rng = np.random.default_rng(arguments.seed)
    names = train_sequences(arguments.davis_root)
    folds = held_out_folds(arguments)
    kept = names if folds is None else without_held_out(names, folds)
    overrides = {"tracker": {"weights": arguments.tracker_weights}}
    engine = BuiltinEngine(BuiltinConfig.load(overrides=overrides))
    min_share = arguments.min_share
    sequences = [tracked_sequence(arguments, engine, name) for name in kept]
    samples = [(s, i) for s in sequences for i in samples_of(s, min_share)]
    print(f"{len(samples)} frames with thin parts in {len(sequences)} sequences", flush=True)
    inputs = THIN_PART_INPUTS + int(arguments.prompt_input)
    refiner = MaskRefiner(width=arguments.width, input_channels=inputs)

    def refiner_loss(step: int) -> tuple[torch.Tensor, str]:
        examples = []
        while len(examples) < arguments.batch_size:
            if rng.random() < arguments.synthetic_probability:
                sequence = sequences[int(rng.integers(len(sequences)))]
                index, synthetic = int(rng.integers(1, len(sequence.frames))), True
            else:
                (sequence, index), synthetic = samples[int(rng.integers(len(samples)))], False
            example = crop_example(
                sequence, index, arguments.crop, min_share, rng, synthetic, arguments.prompt_input
            )
            if example is not None:
                examples.append(example)
        inputs, coarse, target, band = (torch.stack(parts) for parts in zip(*examples, strict=True))
        return band_loss(refiner(inputs, coarse), target, band), ""

    fit_and_save(refiner, refiner_loss, arguments)


if __name__ == "__main__":
    encoder = BuiltinConfig.load().encoder.variant
    parser = training_arguments(__doc__.split("\n\n")[0], 2000, encoder)
    parser.add_argument(
        "--min-share",
        type=float,
        default=0.05,
        help="frames whose object's thin parts were at least this share of its mask on the "
        "frame before are samples (as [tracker] thin_parts decides at inference)",
    )
    parser.add_argument(
        "--synthetic-probability",
        type=float,
        default=0.5,
        help="share of samples that are any train frame with synthetic lines drawn from its "
        "object (the train sequences have few real thin parts)",
    )
    parser.add_argument(
        "--prompt-input",
        action="store_true",
        help="the refiner also reads the object's mask on its nearest prompted frame (drawn "
        "from 1-60 frames back in training), and refines around its thin parts too",
    )
    parser.add_argument("--crop", type=int, default=256, help="training crops, pixels a side")
    parser.add_argument("--width", type=int, default=16, help="the refiner's channels at stride 2")
    parser.add_argument(
        "--tracker-weights",
        default="",
        help="the tracker networks whose outputs the refiner learns to correct, as in "
        "[tracker] weights (default: the shipped ones)",
    )
    arguments = parser.parse_args()
    arguments.output = arguments.output or thin_parts_weights_path()
    train(arguments)
