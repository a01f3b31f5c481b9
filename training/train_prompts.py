"""Train the click/box-to-mask prompt decoder on cached DAVIS 2016 train features.

Each sample is one train frame (mirrored or not, randomly cropped) with simulated prompts of
one of three kinds, as an annotator gives them:
- clicks: 1-3 positive clicks inside the object (the first one well inside) and 0-3 negative
  clicks near it;
- a box: the object's box, jittered by up to 10% of its size, sometimes with one click;
- a correction: a damaged version of the true mask (grown, shrunk, with blobs added or cut)
  as the current mask, plus a click in the middle of its largest error region, as the
  simulated-click protocol of the benchmark does.

With ``--paste-probability``, another sequence's object is pasted into the frame (in feature
space, as the tracker's distractors are) and is the target half the time: with two objects in
view, only the prompt tells which one is meant, so the decoder must follow it rather than pick
the frame's most salient object.

With ``--iterative-clicks N`` (RITM's iterative training), each batch then goes through 0 to N
rounds of prediction, each adding the benchmark's next click from the decoder's own errors
with its prediction as the current mask; with ``--loss-on-every-round`` every round's
prediction is supervised, so the first click is trained as much as the corrections.

With ``--procedural-sequences K``, K sequences of procedurally drawn frames (textured shapes
over cluttered textures, ``procedural_shapes.py``) join the train sequences, so that the
decoder also meets shapes unlike DAVIS's objects.

    python training/train_prompts.py     # the shipped recipe: paste 0.5, 2 procedural sequences,
                                         # 3 click rounds, every round supervised
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from feature_cache import build_cache
from procedural_shapes import build_procedural_cache
from train_tracker import (
    fit_and_save,
    held_out_folds,
    load_sequences,
    paste_distractor,
    same_scale,
    segmentation_loss,
    training_arguments,
    without_held_out,
)

from vidseg.engines.builtin.config import BuiltinConfig
from vidseg.engines.builtin.encoder import ENCODER_VARIANTS
from vidseg.engines.builtin.network import prompt_weights_path
from vidseg.engines.builtin.prompt_decoder import PromptDecoder, click_similarity, prompt_maps


def interior_distance(mask: np.ndarray) -> np.ndarray:
    """Distance of each pixel of ``mask`` to its border (the frame edge counts as border)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]


def pick(rng: np.random.Generator, candidates: np.ndarray, count: int) -> np.ndarray:
    """``count`` random (x, y) points among the True pixels of ``candidates``."""
    ys, xs = np.nonzero(candidates)
    if len(xs) == 0 or count == 0:
        return np.zeros((0, 2))
    chosen = rng.integers(len(xs), size=count)
    return np.stack([xs[chosen], ys[chosen]], 1) + 0.5


def damaged(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask grown or shrunk, with a random blob added or cut: a plausible wrong mask."""
    radius = int(rng.integers(2, 16))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    operation = cv2.dilate if rng.random() < 0.5 else cv2.erode
    out = operation(mask.astype(np.uint8), kernel) > 0
    height, width = mask.shape
    for _ in range(int(rng.integers(0, 3))):
        blob = np.zeros((height, width), np.uint8)
        centre = (int(rng.integers(width)), int(rng.integers(height)))
        axes = (int(rng.integers(8, width // 4)), int(rng.integers(8, height // 4)))
        cv2.ellipse(blob, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        out = out | (blob > 0) if rng.random() < 0.5 else out & (blob == 0)
    return out


def error_click(mask: np.ndarray, prediction: np.ndarray, rng: np.random.Generator):
    """The benchmark's next click, randomised a little: near the interior point of the larger
    error region, positive on a missed part, negative on a wrong one. Returns (positive,
    negative), one of them a single (x, y) point, both empty when the prediction is right."""
    missed = interior_distance(mask & ~prediction)
    extra = interior_distance(prediction & ~mask)
    if missed.max() >= extra.max() and missed.max() > 0:
        return pick(rng, missed >= missed.max() * 0.9, 1), np.zeros((0, 2))
    if extra.max() > 0:
        return np.zeros((0, 2)), pick(rng, extra >= extra.max() * 0.9, 1)
    return np.zeros((0, 2)), np.zeros((0, 2))


def simulate_prompt(mask: np.ndarray, rng: np.random.Generator):
    """(positive, negative, box, current) for one sample; points in input pixels."""
    inside = interior_distance(mask)
    outside = interior_distance(~mask)
    near = (outside > 4) & (outside < 40)
    positive, negative = np.zeros((0, 2)), np.zeros((0, 2))
    box, current = None, None
    kind = rng.choice(3, p=[0.5, 0.2, 0.3])
    if kind == 0:
        positive = np.concatenate(
            [pick(rng, inside >= 0.5 * inside.max(), 1), pick(rng, inside > 3, rng.integers(0, 3))]
        )
        negative = pick(rng, near, int(rng.integers(0, 4)))
    elif kind == 1:
        ys, xs = np.nonzero(mask)
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        jitter = rng.uniform(-0.1, 0.1, 4) * np.array([x2 - x1, y2 - y1, x2 - x1, y2 - y1])
        box = np.array([x1, y1, x2, y2], float) + jitter
        if rng.random() < 0.3:
            positive = pick(rng, inside >= 0.5 * inside.max(), 1)
    else:
        current = damaged(mask, rng)
        positive = pick(rng, inside >= 0.5 * inside.max(), int(rng.integers(0, 3)))
        new_positive, negative = error_click(mask, current, rng)
        positive = np.concatenate([positive, new_positive])
        if len(positive) == 0 and len(negative) == 0:
            positive = pick(rng, inside >= 0.5 * inside.max(), 1)
    return positive, negative, box, current


class Example:
    """One training sample: a cropped frame's features, the target mask and its prompt."""

    def __init__(self, features, mask, positive, negative, box, current) -> None:
        self.features, self.mask = features, mask
        self.positive, self.negative, self.box, self.current = positive, negative, box, current

    def add_click(self, prediction: np.ndarray, rng: np.random.Generator) -> None:
        """The next click from this prediction's errors (:func:`error_click`); the prediction
        becomes the current mask, as in the session."""
        positive, negative = error_click(self.mask, prediction, rng)
        self.positive = np.concatenate([self.positive, positive])
        self.negative = np.concatenate([self.negative, negative])
        self.current = prediction


def sample_examples(
    sequences, rng, batch_size: int, crop_cells=(16, 28), paste_probability: float = 0.0
) -> list[Example]:
    examples: list[Example] = []
    while len(examples) < batch_size:
        sequence = sequences[rng.integers(len(sequences))]
        frame, mirror = int(rng.integers(sequence.length)), int(rng.integers(2))
        top = int(rng.integers(0, sequence.stride16.shape[-2] - crop_cells[0] + 1))
        left = int(rng.integers(0, sequence.stride16.shape[-1] - crop_cells[1] + 1))
        mask = (
            sequence.masks[
                mirror,
                frame,
                top * 16 : (top + crop_cells[0]) * 16,
                left * 16 : (left + crop_cells[1]) * 16,
            ].numpy()
            > 0
        )
        if mask.sum() < 256:
            continue
        features = {}
        for stride in (4, 8, 16):
            scale = 16 // stride
            features[stride] = getattr(sequence, f"stride{stride}")[
                mirror,
                frame,
                :,
                top * scale : (top + crop_cells[0]) * scale,
                left * scale : (left + crop_cells[1]) * scale,
            ].float()
        if paste_probability and rng.random() < paste_probability:
            mask, features = two_objects(sequences, sequence, rng, mask, features)
            if mask.sum() < 256:
                continue
        examples.append(Example(features, mask, *simulate_prompt(mask, rng)))
    return examples


def collate(examples: list[Example]) -> dict[str, torch.Tensor]:
    """The decoder's inputs for a batch of examples, with their prompts drawn as the engine
    draws them (clicks and box at stride 4, the current mask area-averaged to stride 4)."""
    parts: dict[str, list[torch.Tensor]] = {
        key: [] for key in ("stride4", "stride8", "stride16", "maps", "similarity", "masks")
    }
    for example in examples:
        size4 = (example.mask.shape[0] // 4, example.mask.shape[1] // 4)
        current4 = None
        if example.current is not None:
            current4 = cv2.resize(
                example.current.astype(np.float32), size4[::-1], interpolation=cv2.INTER_AREA
            )
        box4 = None if example.box is None else example.box / 4
        parts["maps"].append(
            prompt_maps(size4, example.positive / 4, example.negative / 4, box4, current4)
        )
        parts["similarity"].append(
            click_similarity(
                example.features[16][None], example.positive / 16, example.negative / 16
            )
        )
        for stride in (4, 8, 16):
            parts[f"stride{stride}"].append(example.features[stride])
        parts["masks"].append(torch.from_numpy(example.mask).float()[None])
    return {key: torch.stack(value) for key, value in parts.items()}


def decode(decoder: PromptDecoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return decoder(
        batch["stride16"], batch["stride8"], batch["stride4"], batch["maps"], batch["similarity"]
    )


def add_clicks(examples: list[Example], logits: torch.Tensor, rng: np.random.Generator) -> None:
    """Each example's next click, from its prediction (stride-4 ``logits``) at input size."""
    full = F.interpolate(logits.detach(), scale_factor=4, mode="bilinear", align_corners=False)
    for example, prediction in zip(examples, full[:, 0].numpy() > 0, strict=True):
        example.add_click(prediction, rng)


def two_objects(sequences, sequence, rng, mask: np.ndarray, features: dict[int, torch.Tensor]):
    """Paste another sequence's object into the frame (see ``paste_distractor``) and choose
    the target: the pasted object half the time (when it shows), else the frame's own object,
    less what the pasted one covers. Returns the target mask and the features."""
    clip = {f"stride{stride}": features[stride][None] for stride in (4, 8, 16)}
    clip["masks"] = torch.from_numpy(mask).float()[None, None]
    pasted = paste_distractor(clip, same_scale(sequences, sequence), rng, sequence.name)
    target = clip["masks"]
    if pasted is not None and pasted.sum() >= 256 and rng.random() < 0.5:
        target = pasted
    features = {stride: clip[f"stride{stride}"][0] for stride in (4, 8, 16)}
    return target[0, 0].numpy() > 0, features


def train(arguments: argparse.Namespace) -> None:
    torch.manual_seed(arguments.seed)
    torch.set_num_threads(arguments.threads)
    rng = np.random.default_rng(arguments.seed)
    paths = build_cache(arguments.davis_root, arguments.cache_dir, encoder_name=arguments.encoder)
    folds = held_out_folds(arguments)
    if folds is not None:
        paths = without_held_out(paths, folds)
    # Procedural frames join as sequences of their own, drawn as often as a train sequence.
    paths += build_procedural_cache(
        arguments.procedural_sequences, arguments.cache_dir, encoder_name=arguments.encoder
    )
    sequences = load_sequences(paths)
    decoder = PromptDecoder(ENCODER_VARIANTS[arguments.encoder].channels)

    def prompt_loss(step: int) -> tuple[torch.Tensor, str]:
        hard_fraction = 1.0 - 0.85 * min(1.0, step / (0.3 * arguments.steps))
        examples = sample_examples(
            sequences, rng, arguments.batch_size, paste_probability=arguments.paste_probability
        )

        def loss(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            logits = decode(decoder, batch)
            upsampled = F.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=False)
            target = F.avg_pool2d(batch["masks"], 2)
            return segmentation_loss(upsampled, target, hard_fraction), logits

        rounds = 0
        if arguments.iterative_clicks:  # no draw otherwise: the stream stays as before
            rounds = int(rng.integers(arguments.iterative_clicks + 1))
        # RITM's iterative training: each round predicts and adds the next click from the
        # prediction's own errors, so the decoder learns to correct the masks it really makes.
        losses = []
        for round_index in range(rounds + 1):
            if round_index == rounds or arguments.loss_on_every_round:
                value, logits = loss(collate(examples))
                losses.append(value)
            else:
                with torch.no_grad():
                    logits = decode(decoder, collate(examples))
            if round_index < rounds:
                add_clicks(examples, logits, rng)
        return torch.stack(losses).mean(), ""

    fit_and_save(decoder, prompt_loss, arguments)


if __name__ == "__main__":
    parser = training_arguments(
        __doc__.split("\n\n")[0], 2500, BuiltinConfig.load().prompts.encoder
    )
    parser.add_argument(
        "--paste-probability",
        type=float,
        default=0.5,
        help="chance that a sample gets a second object pasted in, the target half the time",
    )
    parser.add_argument(
        "--iterative-clicks",
        type=int,
        default=3,
        help="up to this many extra clicks per sample, each from the decoder's own errors (RITM)",
    )
    parser.add_argument(
        "--procedural-sequences",
        type=int,
        default=2,
        help="sequences of 150 procedural frames (textured shapes, procedural_shapes.py) "
        "to train on beside the train sequences",
    )
    parser.add_argument(
        "--loss-on-every-round",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --iterative-clicks, supervise each round's prediction, not only the last",
    )
    arguments = parser.parse_args()
    arguments.output = arguments.output or prompt_weights_path(arguments.encoder)
    train(arguments)
