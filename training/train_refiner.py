"""Train the mask refiner (full-resolution correction of the prompt decoder's mask).

1. Samples, cached per sequence in ``training/cache/refiner/``: on every ``--frame-step``-th
   frame of each DAVIS 2016 train sequence, the simulated-click protocol of
   ``benchmarks/clicks.py`` is played with the shipped prompt decoder, the refiner off (up to
   ``--clicks`` clicks, until IoU 0.97), and the object's box is given once; after each
   prompt the decoder's logit, upsampled to the frame (what the refiner will be given), is
   kept with the clicks so far. The samples are the decoder's real mistakes, thin parts and
   boundaries above all, and the clicks an annotator puts on them.
2. Training: crops of ``--crop`` pixels around the object (mostly centred on an error of the
   coarse mask), mirrored at random, with colour jitter; bootstrapped cross-entropy plus
   Dice against the true mask at full resolution.

    python training/train_refiner.py     # writes src/vidseg/engines/builtin/weights/mask_refiner.pt
    python training/train_refiner.py --hold-out --output /tmp/refiner_hold4.pt
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from feature_cache import photometric_jitter, read_sequence, train_sequences
from train_tracker import (
    fit_and_save,
    held_out_folds,
    segmentation_loss,
    training_arguments,
    without_held_out,
)

from vidseg.engines.builtin import BuiltinConfig, BuiltinEngine
from vidseg.engines.builtin.mask_refiner import (
    LOGIT_LIMIT,
    MaskRefiner,
    refine_logit,
    refine_region,
    refiner_input,
)
from vidseg.engines.builtin.network import refiner_weights_path
from vidseg.engines.builtin.prompt_decoder import honour_clicks
from vidseg.evaluation import next_click, region_similarity
from vidseg.session.prompts import ObjectPrompt

# Logits are cached as int8 in steps of 1/20: +-6.35 covers the refiner's +-LOGIT_LIMIT.
_LOGIT_STEP = 20.0
_STOP_IOU = 0.97


@dataclass
class Sample:
    """One prompt on one frame: the decoder's logit and the clicks given so far."""

    frame: int  # index into the sequence's kept frames
    logit: np.ndarray  # (H, W) int8, logit * _LOGIT_STEP
    points: np.ndarray  # (K, 2) float32 (x, y)
    labels: np.ndarray  # (K,) int64


@dataclass
class SequenceSamples:
    frames: np.ndarray  # (F, H, W, 3) uint8
    masks: np.ndarray  # (F, H, W) bool
    samples: list[Sample]


def play_protocol(
    engine: BuiltinEngine, frame: np.ndarray, truth: np.ndarray, clicks: int
) -> list[Sample]:
    """The decoder's logits along the simulated-click protocol on ``frame``, and for the
    object's box (``Sample.frame`` left 0). With ``[prompts] refine`` on in ``engine``'s
    config, the clicks and current masks follow the refined masks (the refiner in the loop,
    as at inference), while the samples keep the decoder's own logits."""
    decoder, refiner = engine.prompt_decoder, engine.mask_refiner
    assert decoder is not None
    max_radius = engine.config.prompts.honour_clicks * max(frame.shape[:2])

    def sample(prompt: ObjectPrompt, previous: np.ndarray | None) -> tuple[Sample, np.ndarray]:
        logit = engine.prompt_logit(decoder, frame, prompt, previous).clamp(
            -LOGIT_LIMIT, LOGIT_LIMIT
        )
        quantised = (logit * _LOGIT_STEP).round().to(torch.int8).numpy()
        if refiner is not None:
            logit = refine_logit(refiner, frame, logit, prompt.points, prompt.labels)
        mask = honour_clicks((logit > 0).numpy(), prompt.points, prompt.labels, max_radius)
        return Sample(0, quantised, prompt.points.copy(), prompt.labels.copy()), mask

    rows, cols = np.nonzero(truth)
    box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
    samples = [sample(ObjectPrompt(box=box), None)[0]]
    points, labels = np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
    mask, previous = np.zeros_like(truth), None
    for _ in range(clicks):
        (x, y), label = next_click(mask, truth)
        if label == 0 and not mask.any():
            break
        points = np.concatenate([points, np.array([[x, y]], np.float32)])
        labels = np.concatenate([labels, np.array([label])])
        new, mask = sample(ObjectPrompt(points=points, labels=labels), previous)
        samples.append(new)
        if not mask.any() or region_similarity(mask, truth) >= _STOP_IOU:
            break
        previous = mask
    return samples


def sequence_samples(
    arguments: argparse.Namespace, engine: BuiltinEngine, name: str, decoder_name: str = ""
) -> SequenceSamples:
    """The samples of sequence ``name``, read from the cache or played and cached
    (``decoder_name``: which prompt decoder played them, "" for the shipped one)."""
    suffix = f"_{decoder_name}" if decoder_name else ""
    path = arguments.cache_dir / "refiner" / f"{name}_every{arguments.frame_step}{suffix}.npz"
    if not path.is_file():
        frames, masks, samples = [], [], []
        for index, (frame, mask) in enumerate(read_sequence(arguments.davis_root, name)):
            if index % arguments.frame_step or not mask.any():
                continue
            for new in play_protocol(engine, frame, mask, arguments.clicks):
                new.frame = len(frames)
                samples.append(new)
            frames.append(frame)
            masks.append(mask)
        clicks = max(len(s.points) for s in samples)
        points = np.full((len(samples), clicks, 2), -1, np.float32)
        labels = np.full((len(samples), clicks), -1, np.int64)
        for i, s in enumerate(samples):
            points[i, : len(s.points)], labels[i, : len(s.labels)] = s.points, s.labels
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.stem + ".partial.npz")
        np.savez(
            partial,
            frames=np.stack(frames),
            masks=np.stack(masks),
            sample_frames=np.array([s.frame for s in samples]),
            logits=np.stack([s.logit for s in samples]),
            points=points,
            labels=labels,
        )
        partial.rename(path)
        print(f"{name}: {len(frames)} frames, {len(samples)} prompts", flush=True)
    data = np.load(path)
    samples = []
    for frame, logit, points, labels in zip(
        data["sample_frames"], data["logits"], data["points"], data["labels"], strict=True
    ):
        given = labels >= 0
        samples.append(Sample(int(frame), logit, points[given], labels[given]))
    return SequenceSamples(data["frames"], data["masks"], samples)


def decoders_and_sequences(
    cross_fit: list[str] | None, names: list[str]
) -> list[tuple[str | None, list[str]]]:
    """(prompt-decoder weights, the sequences it plays the protocol on) pairs: the shipped
    decoder (None) on every sequence, or per ``--cross-fit WEIGHTS:FOLDS`` entry the decoder
    in WEIGHTS on the sequences of FOLDS (``without_held_out``'s folds), which it should not
    have been trained on.

    >>> decoders_and_sequences(["a.pt:0,1", "b.pt:2,3,4"], list("abcdefghij"))
    [('a.pt', ['a', 'b', 'f', 'g']), ('b.pt', ['c', 'd', 'e', 'h', 'i', 'j'])]
    """
    if not cross_fit:
        return [(None, names)]
    pairs = []
    for entry in cross_fit:
        weights, _, folds = entry.rpartition(":")
        held = [int(fold) for fold in folds.split(",")]
        played = [name for name in names if name not in without_held_out(names, held)]
        pairs.append((weights, played))
    return pairs


def crop_example(
    data: SequenceSamples, sample: Sample, size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(refiner input, coarse logit, true mask) of a ``size``-pixel crop of ``sample``'s
    frame: centred on an error of the coarse mask most of the time, else anywhere in the
    box the refiner would work on."""
    frame, truth = data.frames[sample.frame], data.masks[sample.frame]
    logit = sample.logit.astype(np.float32) / _LOGIT_STEP
    points, labels = sample.points.copy(), sample.labels
    height, width = truth.shape
    if rng.random() < 0.5:
        frame, truth, logit = frame[:, ::-1], truth[:, ::-1], logit[:, ::-1]
        points[:, 0] = width - points[:, 0]
    errors = (logit > 0) != truth
    if errors.any() and rng.random() < 0.7:
        rows, cols = np.nonzero(errors)
    else:
        top, bottom, left, right = refine_region(1 / (1 + np.exp(-logit)), points) or (
            0,
            height,
            0,
            width,
        )
        rows, cols = np.mgrid[top:bottom, left:right].reshape(2, -1)
    pick = int(rng.integers(len(rows)))
    crop_height, crop_width = min(size, height - height % 4), min(size, width - width % 4)
    top = int(np.clip(rows[pick] - crop_height // 2, 0, height - crop_height))
    left = int(np.clip(cols[pick] - crop_width // 2, 0, width - crop_width))
    window = (slice(top, top + crop_height), slice(left, left + crop_width))
    image = photometric_jitter(np.ascontiguousarray(frame[window]), rng)
    crop_logit = torch.from_numpy(np.ascontiguousarray(logit[window]))
    inputs = refiner_input(image, crop_logit, points - np.array([left, top]), labels)
    target = torch.from_numpy(np.ascontiguousarray(truth[window])).float()
    return inputs[0], crop_logit[None], target[None]


def train(arguments: argparse.Namespace) -> None:
    torch.manual_seed(arguments.seed)
    torch.set_num_threads(arguments.threads)
    rng = np.random.default_rng(arguments.seed)
    names = train_sequences(arguments.davis_root)
    folds = held_out_folds(arguments)
    kept = set(names if folds is None else without_held_out(names, folds))
    sequences = []
    for weights, played in decoders_and_sequences(arguments.cross_fit, names):
        loop = arguments.refiner_in_loop
        overrides = {
            "prompts": {
                "weights": str(weights or ""),
                "refine": loop is not None,
                "refiner_weights": str(loop or ""),
            }
        }
        engine = BuiltinEngine(BuiltinConfig.load(overrides=overrides))
        decoder_name = "_".join(
            ([Path(weights).stem] if weights else []) + ([f"loop-{loop.stem}"] if loop else [])
        )
        sequences += [
            sequence_samples(arguments, engine, name, decoder_name)
            for name in played
            if name in kept
        ]
    print(f"{sum(len(s.samples) for s in sequences)} prompts on {len(sequences)} sequences")
    refiner = MaskRefiner(width=arguments.width)

    def refiner_loss(step: int) -> tuple[torch.Tensor, str]:
        examples = []
        for _ in range(arguments.batch_size):
            data = sequences[int(rng.integers(len(sequences)))]
            sample = data.samples[int(rng.integers(len(data.samples)))]
            examples.append(crop_example(data, sample, arguments.crop, rng))
        inputs, coarse, target = (torch.stack(parts) for parts in zip(*examples, strict=True))
        refined = refiner(inputs, coarse)
        return segmentation_loss(refined, target, arguments.hard_fraction), ""

    fit_and_save(refiner, refiner_loss, arguments)


if __name__ == "__main__":
    parser = training_arguments(
        __doc__.split("\n\n")[0], 3000, BuiltinConfig.load().prompts.encoder
    )
    parser.add_argument("--frame-step", type=int, default=5, help="every Nth train frame")
    parser.add_argument("--clicks", type=int, default=10, help="protocol clicks per frame")
    parser.add_argument("--crop", type=int, default=256, help="training crops, pixels a side")
    parser.add_argument("--width", type=int, default=16, help="the refiner's channels at stride 2")
    parser.add_argument(
        "--hard-fraction",
        type=float,
        default=1.0,
        help="cross-entropy on this share of each crop's pixels, the hardest (1 = all)",
    )
    parser.add_argument(
        "--cross-fit",
        nargs="+",
        metavar="WEIGHTS:FOLDS",
        help="play the protocol on the sequences of FOLDS (e.g. 0,1,2) with the prompt decoder "
        "in WEIGHTS, trained without them (train_prompts.py --hold-out 0 1 2), so that the "
        "samples show the decoder's mistakes on frames it never saw (default: the shipped "
        "decoder on every sequence)",
    )
    parser.add_argument(
        "--refiner-in-loop",
        type=Path,
        metavar="WEIGHTS",
        help="play the protocol with this refiner behind the decoder, as at inference, so that "
        "the clicks land on the refined masks' errors (DAgger; the samples keep the decoder's "
        "logits)",
    )
    arguments = parser.parse_args()
    arguments.output = arguments.output or refiner_weights_path()
    train(arguments)
