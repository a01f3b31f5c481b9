"""Train the built-in engine's learned parts (key projection, memory encoder, mask decoder).

On the 30 DAVIS 2016 train sequences only, on cached frozen-encoder features (see
``feature_cache.py``; built first if missing). STM-style: each sample is three frames of one
sequence, at random gaps and in random temporal order; the first comes with its true mask, the
second is predicted from it, and the third from both (with the second's *predicted* mask, as at
inference). Seeded and deterministic on CPU.

    python training/train_tracker.py        # about 40 minutes on 2 CPU cores, writes the weights
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from feature_cache import CACHE_DIR, DAVIS_ROOT, build_cache, stride2_path, train_sequences
from synthetic_clips import SYNTHETIC_FRAMES, build_synthetic_cache

from vidseg.engines.builtin.config import BuiltinConfig
from vidseg.engines.builtin.encoder import ENCODER_VARIANTS
from vidseg.engines.builtin.network import (
    DECODER_CHANNELS,
    TrackingNetwork,
    save_half,
    tracker_weights_path,
)

CLIP_FRAMES = 3
# Chance that a predicted frame of a clip is a cut to another sequence, and again that the
# object is covered by an occluder (see hide_object).
ABSENCE_PROBABILITY = 0.3
# The presence head learns "visible" for an object showing at least this many pixels in the
# crop (at the cache's scale), with this weight beside the mask loss.
MIN_VISIBLE_PIXELS = 16
PRESENCE_WEIGHT = 0.5
WEIGHT_DECAY = 1e-4


@dataclass
class Sequence:
    name: str
    stride4: torch.Tensor  # (2 mirrors, T, 24, H/4, W/4) float16
    stride8: torch.Tensor
    stride16: torch.Tensor
    masks: torch.Tensor  # (2, T, H, W) uint8
    # (2, T, 16, H/2, W/2) float16, when cached (feature_cache.py --stride2).
    stride2: torch.Tensor | None = None
    # Photometric variants of the frames (feature_cache.py --photometric): per variant, the
    # three feature maps as above; the masks are the same.
    variants: list[dict[str, torch.Tensor]] = field(default_factory=list)
    # Composed by synthetic_clips.py (a train object pasted onto another sequence), not filmed.
    synthetic: bool = False

    @property
    def length(self) -> int:
        return self.masks.shape[1]

    def features(self, stride: int, variant: int = 0) -> torch.Tensor:
        """The features at ``stride`` of the frames as they are (``variant`` 0) or of
        photometric variant ``variant``."""
        name = f"stride{stride}"
        if variant == 0:
            return getattr(self, name)
        if name not in self.variants[variant - 1]:
            raise ValueError(f"photometric variants have no {name} features cached")
        return self.variants[variant - 1][name]


@dataclass
class Batch:
    stride4: torch.Tensor  # (B, T, C, h, w) float32
    stride8: torch.Tensor
    stride16: torch.Tensor
    masks: torch.Tensor  # (B, T, 1, H, W) float32
    stride2: torch.Tensor | None = None  # when the sequences have them


def _on_device(tensors: dict[str, torch.Tensor], device: str | torch.device) -> dict:
    """``tensors`` copied to ``device``; on the CPU left as they are (memory-mapped)."""
    if torch.device(device).type == "cpu":
        return tensors
    return {name: value.to(device) for name, value in tensors.items()}


def load_sequences(
    paths: list[Path],
    variant_paths: list[list[Path]] | None = None,
    device: str | torch.device = "cpu",
) -> list[Sequence]:
    """The cached sequences, memory-mapped: the page cache holds them once however many
    training processes read them (several scales of the cache are over 10 GB). With
    ``variant_paths`` (one list per path), each sequence also gets those photometric
    variants' features. Stride-2 features come along where their companion file is cached
    (``feature_cache.py --stride2``). On another ``device`` than the CPU (a GPU) the
    sequences are copied there whole, so that clips are cut and augmented where the network
    runs (5.3 GB for Lite2's features)."""
    sequences = []
    for index, path in enumerate(paths):
        cached = torch.load(path, weights_only=True, mmap=True)
        if stride2_path(path).exists():
            cached |= torch.load(stride2_path(path), weights_only=True, mmap=True)
        variants = []
        for variant_path in variant_paths[index] if variant_paths else []:
            variant = torch.load(variant_path, weights_only=True, mmap=True)
            variants.append({name: variant[name] for name in ("stride4", "stride8", "stride16")})
        cached = _on_device(cached, device)
        variants = [_on_device(variant, device) for variant in variants]
        sequences.append(Sequence(path.stem, **cached, variants=variants))
    return sequences


def load_synthetic(paths: list[Path], device: str | torch.device = "cpu") -> list[Sequence]:
    """The synthetic sequences in ``synthetic_clips.py``'s cache files, memory-mapped (copied
    to ``device`` when that is not the CPU): each file holds CHUNK sequences of
    SYNTHETIC_FRAMES frames one after another."""
    sequences = []
    for path in paths:
        cached = _on_device(torch.load(path, weights_only=True, mmap=True), device)
        for index in range(cached["masks"].shape[1] // SYNTHETIC_FRAMES):
            frames = slice(index * SYNTHETIC_FRAMES, (index + 1) * SYNTHETIC_FRAMES)
            parts = {name: value[:, frames] for name, value in cached.items()}
            sequences.append(Sequence(f"{path.stem}-{index}", **parts, synthetic=True))
    return sequences


HOLD_OUT_FOLDS = 5
DEFAULT_HOLD_OUT_FOLD = 4
_Item = TypeVar("_Item")  # a cache path or a sequence name


def without_held_out(
    paths: list[_Item], folds: int | Iterable[int] = DEFAULT_HOLD_OUT_FOLD
) -> list[_Item]:
    """Every fifth train sequence left out, from the ``fold``-th on, for each of ``folds``
    (``paths``, or sequence names, in train-list order): a held-out part of train on which
    settings and recipes can be chosen without looking at val
    (``benchmarks/presence_holdout.py --fold`` tracks the ones left out). Two folds give 12
    held-out sequences, which six alone did not stand in for.

    >>> without_held_out(list("abcdefghij"), [3, 4])
    ['a', 'b', 'c', 'f', 'g', 'h']
    """
    folds = {folds} if isinstance(folds, int) else set(folds)
    for fold in folds:
        if not 0 <= fold < HOLD_OUT_FOLDS:
            raise ValueError(f"hold-out fold {fold} is not in 0..{HOLD_OUT_FOLDS - 1}")
    return [path for i, path in enumerate(paths) if i % HOLD_OUT_FOLDS not in folds]


def same_scale(sequences: list[Sequence], sequence: Sequence) -> list[Sequence]:
    """The sequences cached at the same frame size as ``sequence`` (the cache can hold several
    scales): what a distractor or occluder may come from, so that its windows line up."""
    size = sequence.masks.shape[-2:]
    return [s for s in sequences if s.masks.shape[-2:] == size]


@dataclass(frozen=True)
class ClipRecipe:
    """How :func:`sample_batch` draws and augments each clip; the chances are per clip unless
    said otherwise."""

    #: Frames per clip: the first prompted, each later one predicted.
    frames: int = CLIP_FRAMES
    #: Another sequence's object moves through the clip (:func:`paste_distractor`) ...
    distractor_probability: float = 0.0
    #: ... and passes behind the object instead of in front of it.
    behind_probability: float = 0.0
    #: The clip is one frame three times (a static-image sequence, moved by :func:`warp_clip`).
    static_probability: float = 0.0
    #: A real clip's frames are warped too.
    warp_probability: float = 0.0
    #: Per predicted frame, the chance of a cut, and again of an occluder (:func:`hide_object`).
    absence_probability: float = ABSENCE_PROBABILITY
    #: Per predicted frame that still shows the object, part of it is covered (:func:`cover_part`).
    partial_occlusion_probability: float = 0.0
    #: Per frame, it comes from a random photometric variant of the sequence (if it has any):
    #: the object's look changes between memory and query, as under real lighting and
    #: compression ...
    photometric_probability: float = 0.0
    #: ... or, with this, the whole clip comes from one variant (or none).
    per_clip_variant: bool = False
    #: A synthetic sequence (``Sequence.synthetic``) is drawn, a filmed one otherwise.
    synthetic_probability: float = 0.0


def sample_batch(
    sequences: list[Sequence],
    rng: np.random.Generator,
    batch_size: int,
    max_gap: int,
    crop_cells: tuple[int, int],
    recipe: ClipRecipe = ClipRecipe(),
) -> Batch:
    """Random clips: a sequence, a mirror, ``recipe.frames`` frames at gaps of 1..max_gap in
    random temporal order, and a random crop (in stride-16 cells) in which the first frame
    shows the object, augmented as ``recipe`` says."""
    clip_frames = recipe.frames
    parts: dict[str, list[torch.Tensor]] = defaultdict(list)
    filmed = [s for s in sequences if not s.synthetic]
    composed = [s for s in sequences if s.synthetic]
    while len(parts["masks"]) < batch_size:
        # Drawn only when asked for, so that runs without synthetic sequences stay as they were.
        pool = (
            composed
            if recipe.synthetic_probability and rng.random() < recipe.synthetic_probability
            else filmed or composed
        )
        sequence = pool[rng.integers(len(pool))]
        gaps = rng.integers(1, max_gap + 1, size=clip_frames - 1)
        gaps = np.minimum(gaps, (sequence.length - 1) // (clip_frames - 1))
        start = rng.integers(0, sequence.length - gaps.sum())
        frames = start + np.concatenate([[0], np.cumsum(gaps)])
        if rng.random() < 0.5:
            frames = frames[::-1].copy()
        static = recipe.static_probability and rng.random() < recipe.static_probability
        if static:
            frames = np.full(clip_frames, frames[0])
        mirror = int(rng.integers(2))
        cells_high, cells_wide = sequence.stride16.shape[-2:]
        top = rng.integers(0, cells_high - crop_cells[0] + 1)
        left = rng.integers(0, cells_wide - crop_cells[1] + 1)
        variants = None
        if recipe.photometric_probability and sequence.variants and recipe.per_clip_variant:
            # One look for the whole clip (variants cached with --per-sequence).
            variant = int(rng.integers(1, len(sequence.variants) + 1))
            variants = np.full(
                clip_frames, variant if rng.random() < recipe.photometric_probability else 0
            )
        elif recipe.photometric_probability and sequence.variants:
            # Drawn only when asked for, so that runs without variants stay as they were.
            variants = rng.integers(1, len(sequence.variants) + 1, size=clip_frames)
            variants[rng.random(clip_frames) >= recipe.photometric_probability] = 0
        clip = crop_clip(sequence, mirror, frames, (top, left), crop_cells, variants)
        if static:
            warp_clip(clip, rng, strength=1.0)
        elif recipe.warp_probability and rng.random() < recipe.warp_probability:
            warp_clip(clip, rng, strength=0.5)
        peers = same_scale(sequences, sequence)
        if recipe.distractor_probability and rng.random() < recipe.distractor_probability:
            # Drawn only when asked for, so that runs without it stay as they were.
            behind = bool(recipe.behind_probability) and rng.random() < recipe.behind_probability
            paste_distractor(clip, peers, rng, sequence.name, behind)
        if clip["masks"][0].sum() < 64:  # the object must be visible in the prompted frame
            continue
        for t in range(1, clip_frames):
            hide_object(
                clip, t, peers, rng, mirror, (top, left), crop_cells, recipe.absence_probability
            )
            # Drawn only when asked for, so that runs without it stay as they were.
            if (
                recipe.partial_occlusion_probability
                and rng.random() < recipe.partial_occlusion_probability
            ):
                cover_part(clip, t, peers, rng, mirror, (top, left))
        for key, value in clip.items():
            parts[key].append(value)
    return Batch(**{key: torch.stack(value) for key, value in parts.items()})


def feature_strides(with_stride2: bool) -> tuple[int, ...]:
    """The strides a clip holds (1 for the masks), stride 2 where it was cached."""
    return (1, 2, 4, 8, 16) if with_stride2 else (1, 4, 8, 16)


def crop_clip(
    sequence: Sequence,
    mirror: int,
    frames: np.ndarray,
    corner: tuple[int, int],
    crop_cells: tuple[int, int],
    variants: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """Frames of a sequence cropped to ``crop_cells`` stride-16 cells from ``corner``: float32
    masks (T, 1, H, W) and features (T, C, h, w) per stride; ``variants`` gives each frame's
    photometric variant (0 = as it is; default: all 0)."""
    top, left = corner
    if variants is None:
        variants = np.zeros(len(frames), dtype=int)
    clip = {}
    for stride in feature_strides(sequence.stride2 is not None):
        scale = 16 // stride
        rows = slice(top * scale, (top + crop_cells[0]) * scale)
        cols = slice(left * scale, (left + crop_cells[1]) * scale)
        if stride == 1:
            clip["masks"] = sequence.masks[mirror, frames, None, rows, cols].float()
            continue
        windows = [
            sequence.features(stride, int(variant))[mirror, int(frame), :, rows, cols]
            for frame, variant in zip(frames, variants, strict=True)
        ]
        clip[f"stride{stride}"] = torch.stack(windows).float()
    return clip


def warp_clip(clip: dict[str, torch.Tensor], rng: np.random.Generator, strength: float) -> None:
    """Random affine motion and deformation, in place: each frame of the clip gets its own
    scale, rotation, shear and shift (up to ``strength`` times 20%, 15 degrees, 10% and 15%),
    applied alike to its feature maps and mask. A frame's features are not exactly those of the
    warped frame (the encoder is not equivariant), but close enough for the small motions of
    video, and they make a single frame into a moving clip: the static-image sequences of
    STM, without the encoder in the loop."""
    thetas = []
    for _ in range(clip["masks"].shape[0]):
        scale = np.exp(rng.uniform(-0.2, 0.2) * strength)
        angle = np.deg2rad(rng.uniform(-15, 15) * strength)
        shear = rng.uniform(-0.1, 0.1) * strength
        shift = rng.uniform(-0.15, 0.15, size=2) * strength
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        linear = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) / scale
        thetas.append(np.concatenate([linear, shift[:, None]], axis=1))
    theta = torch.tensor(np.stack(thetas), dtype=torch.float32, device=clip["masks"].device)
    for name, value in clip.items():
        grid = F.affine_grid(theta, list(value.shape), align_corners=False)
        warped = F.grid_sample(
            value, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        if name == "masks":
            # Outside the frame there is no object, whatever the border holds.
            inside = F.grid_sample(
                torch.ones_like(value),
                grid,
                mode="nearest",
                padding_mode="zeros",
                align_corners=False,
            )
            warped = (warped * inside > 0.5).float()
        clip[name] = warped


def paste_distractor(
    clip: dict[str, torch.Tensor],
    sequences: list[Sequence],
    rng: np.random.Generator,
    source_name: str,
    behind: bool = False,
) -> torch.Tensor | None:
    """Teach the read-out to tell objects apart: another sequence's object, cut out along its
    mask in every feature map, moves through the clip in front of the target (the prompted
    frame included, where memory learns it as background); the truth loses what it covers. The
    distractor comes from another sequence than ``source_name``, the clip's own. With
    ``behind``, it passes behind the clip's object instead, showing only around it, and the
    truth keeps all of the object: the decoder learns not to spread onto an unlabelled object
    next to its own (the background's own salient objects). Returns the
    distractor's own mask in the clip, shaped like ``clip["masks"]``, or None if none landed
    (the prompt decoder's training makes it the target half the time)."""
    others = [s for s in sequences if s.name != source_name]
    if not others:
        return None
    other = others[rng.integers(len(others))]
    length = clip["masks"].shape[0]
    step = int(rng.integers(1, 4))
    first = int(rng.integers(0, max(1, other.length - step * (length - 1))))
    frames = np.minimum(first + step * np.arange(length), other.length - 1)
    mirror = int(rng.integers(2))
    object_masks = other.masks[mirror, frames]  # (T, H, W)
    cells = F.max_pool2d(object_masks[:, None].float(), 16).amax(0)[0] > 0
    if not cells.any():
        return None
    rows, cols = torch.nonzero(cells, as_tuple=True)
    y1, y2, x1, x2 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    crop_high, crop_wide = clip["stride16"].shape[-2:]
    height, width = min(y2 - y1, crop_high), min(x2 - x1, crop_wide)
    # The object may be partly outside the crop: its box can start up to half out of view.
    top = int(rng.integers(-(height // 2), crop_high - height // 2))
    left = int(rng.integers(-(width // 2), crop_wide - width // 2))
    # Destination and source windows in cells, clipped to the crop.
    dy1, dx1 = max(0, top), max(0, left)
    dy2, dx2 = min(crop_high, top + height), min(crop_wide, left + width)
    if dy2 <= dy1 or dx2 <= dx1:
        return None
    sy1, sx1 = y1 + dy1 - top, x1 + dx1 - left
    rows_full = slice(sy1 * 16, (sy1 + dy2 - dy1) * 16)
    cols_full = slice(sx1 * 16, (sx1 + dx2 - dx1) * 16)
    cover_full = object_masks[:, None, rows_full, cols_full].float()
    if behind:
        cover_full = cover_full * (1 - clip["masks"][..., dy1 * 16 : dy2 * 16, dx1 * 16 : dx2 * 16])
    for stride in feature_strides("stride2" in clip):
        scale = 16 // stride
        name = "masks" if stride == 1 else f"stride{stride}"
        if stride == 1:
            cover, source = cover_full > 0, torch.zeros_like(cover_full)
        else:
            cover = F.avg_pool2d(cover_full, stride) > 0.5
            source = getattr(other, name)[
                mirror,
                frames,
                :,
                sy1 * scale : (sy1 + dy2 - dy1) * scale,
                sx1 * scale : (sx1 + dx2 - dx1) * scale,
            ].float()
        window = clip[name][..., dy1 * scale : dy2 * scale, dx1 * scale : dx2 * scale]
        window.copy_(torch.where(cover, source, window))
    pasted = torch.zeros_like(clip["masks"])
    pasted[..., dy1 * 16 : dy2 * 16, dx1 * 16 : dx2 * 16] = (cover_full > 0).to(pasted.dtype)
    return pasted


def hide_object(
    clip: dict[str, torch.Tensor],
    t: int,
    sequences: list[Sequence],
    rng: np.random.Generator,
    mirror: int,
    corner: tuple[int, int],
    crop_cells: tuple[int, int],
    probability: float = ABSENCE_PROBABILITY,
) -> None:
    """Teach absence: with ``probability`` each, frame ``t`` of the clip
    becomes a frame of another sequence (a cut: the object is nowhere), or the object's box
    is covered by the same region of another sequence's frame (an occluder), in every feature
    map; the truth loses what was hidden."""
    draw = rng.random()
    if draw >= 2 * probability:
        return
    other = sequences[rng.integers(len(sequences))]
    frame = int(rng.integers(other.length))
    object_box = object_cells(clip, t)
    if draw < probability or object_box is None:
        box = (0, crop_cells[0], 0, crop_cells[1])
    else:  # the object's box grown by one cell, within the crop
        y1, y2, x1, x2 = object_box
        box = (
            max(0, y1 - 1),
            min(crop_cells[0], y2 + 1),
            max(0, x1 - 1),
            min(crop_cells[1], x2 + 1),
        )
    cover_region(clip, t, other, frame, mirror, corner, box)


def object_cells(clip: dict[str, torch.Tensor], t: int) -> tuple[int, int, int, int] | None:
    """The box (rows y1:y2, columns x1:x2, in stride-16 cells of the crop) of the cells the
    object touches in clip frame ``t``; None when it does not show."""
    mask16 = F.max_pool2d(clip["masks"][t], 16)[0] > 0
    if not mask16.any():
        return None
    rows, cols = torch.nonzero(mask16, as_tuple=True)
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def cover_region(
    clip: dict[str, torch.Tensor],
    t: int,
    other: Sequence,
    frame: int,
    mirror: int,
    corner: tuple[int, int],
    box: tuple[int, int, int, int],
) -> None:
    """Cover ``box`` (rows y1:y2, columns x1:x2, in stride-16 cells of the crop) of clip frame
    ``t`` with the same region of ``other``'s ``frame``, in every feature map; the truth
    loses what is covered."""
    top, left = corner
    y1, y2, x1, x2 = box
    for stride in feature_strides("stride2" in clip)[1:]:
        scale = 16 // stride
        source = getattr(other, f"stride{stride}")[
            mirror,
            frame,
            :,
            (top + y1) * scale : (top + y2) * scale,
            (left + x1) * scale : (left + x2) * scale,
        ]
        clip[f"stride{stride}"][t, :, y1 * scale : y2 * scale, x1 * scale : x2 * scale] = source
    clip["masks"][t, :, y1 * 16 : y2 * 16, x1 * 16 : x2 * 16] = 0


def cover_part(
    clip: dict[str, torch.Tensor],
    t: int,
    sequences: list[Sequence],
    rng: np.random.Generator,
    mirror: int,
    corner: tuple[int, int],
) -> None:
    """Partial occlusion: 30-70% of the object's box in frame ``t``, from one side, covered by
    the same region of another sequence's frame (:func:`cover_region`). The object stays
    partly visible, and its truth is what still shows, so the decoder learns to keep a
    partial mask rather than give the object up."""
    object_box = object_cells(clip, t)
    if object_box is None:
        return
    y1, y2, x1, x2 = object_box
    share = rng.uniform(0.3, 0.7)
    side = int(rng.integers(4))
    if side < 2:  # from the top or the bottom
        depth = max(1, round(share * (y2 - y1)))
        y1, y2 = (y1, y1 + depth) if side == 0 else (y2 - depth, y2)
    else:  # from the left or the right
        depth = max(1, round(share * (x2 - x1)))
        x1, x2 = (x1, x1 + depth) if side == 2 else (x2 - depth, x2)
    other = sequences[rng.integers(len(sequences))]
    cover_region(clip, t, other, int(rng.integers(other.length)), mirror, corner, (y1, y2, x1, x2))


def clip_logits(
    network: TrackingNetwork, batch: Batch
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Propagate the first frame's mask through the clip. Per later frame: mask logits
    (B, 1, H/2, W/2) (the loss is taken at stride 2: near full-size boundary accuracy, far
    cheaper) and presence logits (B,)."""
    size, frames = (batch.masks.shape[-2] // 2, batch.masks.shape[-1] // 2), batch.masks.shape[1]
    flat16 = batch.stride16.flatten(0, 1)
    keys = network.key_projection(flat16).unflatten(0, (-1, frames))
    queries = network.mask_decoder.project_query(flat16).unflatten(0, (-1, frames))
    memory_keys = [keys[:, 0].flatten(2)]
    memory_values = [
        network.memory_encoder(batch.stride16[:, 0], F.avg_pool2d(batch.masks[:, 0], 4)).flatten(2)
    ]
    mask_logits, presence_logits = [], []
    # The mask on the frame before, at stride 4, for a decoder that reads it: the prompt's,
    # then each prediction's, as at inference.
    previous = (
        F.avg_pool2d(batch.masks[:, 0], 4) if network.mask_decoder.reads_previous_mask else None
    )
    for t in range(1, frames):
        decoded = network.segment(
            keys[:, t],
            queries[:, t],
            batch.stride8[:, t],
            batch.stride4[:, t],
            torch.cat(memory_keys, 2),
            torch.cat(memory_values, 2),
            None if batch.stride2 is None else batch.stride2[:, t],
            previous,
        )
        logit = decoded.mask_logits
        # The memory encoder (and a decoder reading the previous mask) takes it at stride 4.
        mask4 = F.avg_pool2d(torch.sigmoid(logit), 4 // network.mask_decoder.output_stride)
        if previous is not None:
            previous = mask4
        mask_logits.append(F.interpolate(logit, size=size, mode="bilinear", align_corners=False))
        presence_logits.append(decoded.presence_logits)
        if t + 1 < frames:
            memory_keys.append(keys[:, t].flatten(2))
            memory_values.append(network.memory_encoder(batch.stride16[:, t], mask4).flatten(2))
    return mask_logits, presence_logits


# What the mask loss does on a predicted frame where the object is not visible (cut away or
# hidden): "full" (cross-entropy and Dice towards an empty mask), "cross-entropy" (no Dice,
# which there drives every logit down, not only the ghost's) or "none" (no mask loss at all:
# only the presence head learns absence, as SAM 2 supervises masks only where the object is).
ABSENT_MASK_LOSSES = ("full", "cross-entropy", "none")
# Where the object is hidden only the presence head learns (as SAM 2 supervises masks only
# where the object is present): a mask loss there taught the decoder to erode objects in
# plain view.
ABSENT_MASK_LOSS = "none"


def clip_loss(
    network: TrackingNetwork,
    batch: Batch,
    hard_fraction: float,
    absent_mask_loss: str = ABSENT_MASK_LOSS,
) -> torch.Tensor:
    """Mean over the clip's predicted frames of the mask loss (:func:`segmentation_loss`) and
    the presence loss (binary cross-entropy on "the object shows in the crop");
    ``absent_mask_loss`` (one of :data:`ABSENT_MASK_LOSSES`) is the mask loss where it does
    not."""
    if absent_mask_loss not in ABSENT_MASK_LOSSES:
        raise ValueError(f"absent_mask_loss {absent_mask_loss!r}: one of {ABSENT_MASK_LOSSES}")
    mask_logits, presence_logits = clip_logits(network, batch)
    loss = torch.zeros((), device=batch.masks.device)
    for t, (mask_logit, presence_logit) in enumerate(
        zip(mask_logits, presence_logits, strict=True)
    ):
        truth = batch.masks[:, t + 1]
        visible = (truth.flatten(1).sum(1) >= MIN_VISIBLE_PIXELS).float()
        loss = loss + segmentation_loss(
            mask_logit,
            F.avg_pool2d(truth, 2),
            hard_fraction,
            dice_weight=visible if absent_mask_loss == "cross-entropy" else None,
            sample_weight=visible if absent_mask_loss == "none" else None,
        )
        loss = loss + PRESENCE_WEIGHT * F.binary_cross_entropy_with_logits(presence_logit, visible)
    return loss / len(mask_logits)


def segmentation_loss(
    logit: torch.Tensor,
    target: torch.Tensor,
    hard_fraction: float,
    dice_weight: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bootstrapped cross-entropy (the hardest ``hard_fraction`` of pixels) plus soft Dice,
    the Dice term weighted per sample by ``dice_weight`` (B,) and the whole by
    ``sample_weight`` (B,) when given (a mean over the batch either way)."""
    pixel_loss = F.binary_cross_entropy_with_logits(logit, target, reduction="none").flatten(1)
    if hard_fraction < 1.0:
        count = max(1, int(pixel_loss.shape[1] * hard_fraction))
        pixel_loss = pixel_loss.topk(count, dim=1).values
    probability = torch.sigmoid(logit).flatten(1)
    target = target.flatten(1)
    dice = 1 - (2 * (probability * target).sum(1) + 1) / (probability.sum(1) + target.sum(1) + 1)
    if dice_weight is not None:
        dice = dice * dice_weight
    if sample_weight is not None:
        return ((pixel_loss.mean(1) + dice) * sample_weight).mean()
    return pixel_loss.mean() + dice.mean()


def fit(
    module: torch.nn.Module,
    batch_loss: Callable[[int], tuple[torch.Tensor, str]],
    steps: int,
    lr: float,
    ema_decay: float = 0.0,
    weight_decay: float = WEIGHT_DECAY,
) -> torch.nn.Module:
    """The optimisation loop both training scripts share: AdamW with a one-cycle learning
    rate, gradient clipping, a smoothed loss printed every 100 steps. ``batch_loss(step)``
    samples a batch and returns its loss and a note for the log line. Returns ``module``, or
    with ``ema_decay`` an exponential moving average of its weights over the steps (a copy)."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    # A warm-up of 5% of the steps, and at least 2 (OneCycleLR divides by zero below that).
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=max(0.05, 2.0 / steps)
    )
    averaged = (
        torch.optim.swa_utils.AveragedModel(
            module, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay)
        )
        if ema_decay
        else None
    )
    started, running = time.perf_counter(), 0.0
    for step in range(steps):
        loss, note = batch_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if averaged is not None:
            averaged.update_parameters(module)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == steps - 1:
            minutes = (time.perf_counter() - started) / 60
            print(f"step {step:5d}  loss {running:.4f}  {note}  {minutes:5.1f} min", flush=True)
    return module if averaged is None else averaged.module


def save_trained(module: torch.nn.Module, trained: torch.nn.Module, output: Path) -> None:
    """Write what :func:`fit` returned to ``output``; when that is an average of the weights,
    the last step's own weights go beside it (``<output>-last.pt``) to compare against."""
    save_half(trained, output)
    print(f"wrote {output}", flush=True)
    if trained is not module:
        last = output.with_name(f"{output.stem}-last.pt")
        save_half(module, last)
        print(f"wrote {last} (the last step's weights)", flush=True)


def fit_and_save(
    module: torch.nn.Module,
    batch_loss: Callable[[int], tuple[torch.Tensor, str]],
    arguments: argparse.Namespace,
) -> None:
    """:func:`fit` with the steps, learning rate, weight averaging and decay of the command
    line (:func:`training_arguments`), then :func:`save_trained` to ``arguments.output``."""
    trained = fit(
        module,
        batch_loss,
        arguments.steps,
        arguments.lr,
        arguments.ema_decay,
        arguments.weight_decay,
    )
    save_trained(module, trained, arguments.output)


def train(arguments: argparse.Namespace) -> None:
    torch.manual_seed(arguments.seed)
    torch.set_num_threads(arguments.threads)
    rng = np.random.default_rng(arguments.seed)

    def kept(scale_paths: list[Path]) -> list[Path]:
        folds = held_out_folds(arguments)
        return scale_paths if folds is None else without_held_out(scale_paths, folds)

    paths, variant_paths = [], []
    for long_side in arguments.scales:
        # Each scale is the encoder run on the frames resized: true scale augmentation, which
        # warping cached features cannot give.
        scale_paths = kept(
            build_cache(
                arguments.davis_root,
                arguments.cache_dir,
                long_side,
                encoder_name=arguments.encoder,
                stride2=len(arguments.decoder_channels) > 3,
            )
        )
        variants = [
            kept(
                build_cache(
                    arguments.davis_root,
                    arguments.cache_dir,
                    long_side,
                    k,
                    arguments.photometric_per_sequence,
                    arguments.encoder,
                )
            )
            for k in range(1, arguments.photometric_variants + 1)
        ]
        paths += scale_paths
        variant_paths += [[variant[i] for variant in variants] for i in range(len(scale_paths))]
    sequences = load_sequences(paths, variant_paths, arguments.device)
    print(f"{len(sequences)} sequences, {sum(s.length for s in sequences)} frames", flush=True)
    synthetic = []
    if arguments.synthetic_sequences:
        if len(arguments.decoder_channels) > 3:
            raise SystemExit("synthetic sequences have no stride-2 features: drop the 4th width")
        folds = held_out_folds(arguments)
        names = train_sequences(arguments.davis_root)
        names = names if folds is None else without_held_out(names, folds)
        synthetic = load_synthetic(
            build_synthetic_cache(
                names,
                arguments.synthetic_sequences,
                arguments.davis_root,
                arguments.cache_dir,
                arguments.encoder,
            ),
            arguments.device,
        )[: arguments.synthetic_sequences]
        print(f"{len(synthetic)} synthetic sequences", flush=True)
    sequences += synthetic
    network = TrackingNetwork(
        ENCODER_VARIANTS[arguments.encoder].channels,
        arguments.decoder_channels,
        arguments.previous_mask,
        arguments.key_kernel,
    ).to(arguments.device)

    recipe = ClipRecipe(
        frames=arguments.clip_frames,
        distractor_probability=arguments.distractor_probability,
        behind_probability=arguments.distractor_behind_probability,
        static_probability=arguments.static_probability,
        warp_probability=arguments.warp_probability,
        absence_probability=arguments.absence_probability,
        partial_occlusion_probability=arguments.partial_occlusion_probability,
        photometric_probability=arguments.photometric_probability,
        per_clip_variant=arguments.photometric_per_sequence,
        synthetic_probability=arguments.synthetic_probability if synthetic else 0.0,
    )

    def batch_loss(step: int) -> tuple[torch.Tensor, str]:
        progress = step / arguments.steps
        # Curricula as in STM/XMem: longer gaps and harder pixels as training goes on.
        max_gap = round(3 + (arguments.max_gap - 3) * min(1.0, progress / 0.5))
        hard_fraction = 1.0 - 0.85 * min(1.0, progress / 0.3)
        batch = sample_batch(sequences, rng, arguments.batch_size, max_gap, (16, 28), recipe)
        if arguments.feature_dropout:
            # Dropping whole channels of the frozen features keeps the small network from
            # leaning on a few of them.
            for name in ("stride2", "stride4", "stride8", "stride16"):
                features = getattr(batch, name)
                if features is None:
                    continue
                dropped = F.dropout2d(features.flatten(0, 1), arguments.feature_dropout)
                setattr(batch, name, dropped.unflatten(0, features.shape[:2]))
        loss = clip_loss(network, batch, hard_fraction, arguments.absent_mask_loss)
        return loss, f"gap {max_gap:2d}"

    fit_and_save(network, batch_loss, arguments)


def training_arguments(description: str, steps: int, encoder: str) -> argparse.ArgumentParser:
    """The command-line options both training scripts take, ``--encoder`` defaulting to
    ``encoder`` (each script resolves a missing ``--output`` to where the engine loads its
    weights for ``--encoder``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--davis-root", type=Path, default=DAVIS_ROOT)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument(
        "--output",
        type=Path,
        help="default: the shipped weights for --encoder and --seed, replaced "
        "(tracking_network_lite2.pt for seed 0, tracking_network_lite2_seed1.pt for 1, ...)",
    )
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--weight-decay", type=float, default=WEIGHT_DECAY, help="AdamW's (decoupled) weight decay"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=0.0,
        help="write an exponential moving average of the weights over the steps (e.g. 0.999; "
        "0 = the last step's weights), and the last step's beside it as <output>-last.pt",
    )
    parser.add_argument(
        "--encoder",
        choices=list(ENCODER_VARIANTS),
        default=encoder,
        help=f"whose features to train on (default {encoder}, the engine's)",
    )
    parser.add_argument(
        "--hold-out",
        type=int,
        nargs="*",
        metavar="FOLD",
        help="leave every fifth train sequence out, from the FOLD-th (0-4, default "
        f"{DEFAULT_HOLD_OUT_FOLD}; several folds leave several fifths out), to choose recipes "
        "and settings on them",
    )
    return parser


def held_out_folds(arguments: argparse.Namespace) -> list[int] | None:
    """The folds ``--hold-out`` names (the default fold when it names none); None without
    it."""
    if arguments.hold_out is None:
        return None
    return arguments.hold_out or [DEFAULT_HOLD_OUT_FOLD]


if __name__ == "__main__":
    parser = training_arguments(
        __doc__.split("\n\n")[0], 3500, BuiltinConfig.load().encoder.variant
    )
    parser.add_argument("--max-gap", type=int, default=20)
    parser.add_argument(
        "--device",
        default="cpu",
        help="where to train: cpu (the default; deterministic) or a GPU (cuda, cuda:1, ...), "
        "which holds the whole feature cache; a GPU run is not bit-identical to a CPU one",
    )
    parser.add_argument(
        "--clip-frames",
        type=int,
        default=CLIP_FRAMES,
        help=f"frames per training clip (default {CLIP_FRAMES}): the first prompted, each later "
        "one predicted with all before it in memory, as at inference",
    )
    parser.add_argument(
        "--decoder-channels",
        type=lambda text: tuple(int(c) for c in text.split(",")),
        default=DECODER_CHANNELS,
        help="the mask decoder's channels at strides 16, 8 and 4 (default "
        f"{','.join(map(str, DECODER_CHANNELS))}), and a fourth for a stage at stride 2 (on the "
        "encoder's stride-2 features, cached first); the engine reads them from the weights",
    )
    parser.add_argument(
        "--previous-mask",
        action="store_true",
        help="a mask decoder that also reads the object's mask on the frame before (the prompt's, "
        "then its own prediction's), as a short-term prior; the engine sees it in the weights",
    )
    parser.add_argument(
        "--key-kernel",
        type=int,
        choices=(1, 3),
        default=1,
        help="the key projection's kernel size: 1 (each stride-16 cell alone) or 3 (with its "
        "neighbours, as STM's key encoder); the engine reads it from the weights",
    )
    parser.add_argument(
        "--distractor-probability",
        type=float,
        default=0.5,
        help="chance that a clip gets another sequence's object pasted in (paste_distractor)",
    )
    parser.add_argument(
        "--distractor-behind-probability",
        type=float,
        default=0.0,
        help="chance that a pasted distractor passes behind the object, not in front of it",
    )
    parser.add_argument(
        "--feature-dropout",
        type=float,
        default=0.1,
        help="channel dropout on the frozen features during training",
    )
    parser.add_argument(
        "--static-probability",
        type=float,
        default=0.0,
        help="chance that a clip is one frame, warped three ways (a static-image sequence)",
    )
    parser.add_argument(
        "--warp-probability",
        type=float,
        default=0.0,
        help="chance that a real clip's frames get random affine warps (warp_clip)",
    )
    parser.add_argument(
        "--absence-probability",
        type=float,
        default=ABSENCE_PROBABILITY,
        help="chance that a predicted frame is a cut, and again that it gets an occluder",
    )
    parser.add_argument(
        "--absent-mask-loss",
        choices=ABSENT_MASK_LOSSES,
        default=ABSENT_MASK_LOSS,
        help="the mask loss on frames where the object is not visible: cross-entropy and Dice "
        "(full), cross-entropy only, or none (only the presence head learns absence)",
    )
    parser.add_argument(
        "--photometric-variants",
        type=int,
        default=0,
        help="photometric variants of the cache to build and train on (feature_cache.py "
        "--photometric 1..N; about 7 minutes and 4.4 GB each)",
    )
    parser.add_argument(
        "--photometric-probability",
        type=float,
        default=0.5,
        help="with --photometric-variants, the chance that a clip frame comes from a variant",
    )
    parser.add_argument(
        "--photometric-per-sequence",
        action="store_true",
        help="with --photometric-variants, variants that keep one look for a whole sequence "
        "(feature_cache.py --per-sequence), and one variant per clip instead of per frame",
    )
    parser.add_argument(
        "--partial-occlusion-probability",
        type=float,
        default=0.0,
        help="chance that a predicted frame showing the object has 30-70%% of it covered by "
        "another sequence's frame, from one side (the truth keeps what still shows)",
    )
    parser.add_argument(
        "--synthetic-sequences",
        type=int,
        default=0,
        help="compose, cache and train on this many synthetic sequences too (synthetic_clips.py: "
        "train objects pasted in pixels onto other train sequences; none by default)",
    )
    parser.add_argument(
        "--synthetic-probability",
        type=float,
        default=0.3,
        help="with --synthetic-sequences, the chance that a clip comes from a synthetic one",
    )
    parser.add_argument(
        "--scales",
        type=lambda text: [int(size) for size in text.split(",")],
        default=[BuiltinConfig.load().encoder.long_side],
        help="encoder input sizes (long side, px) to cache and train on, e.g. 448,576,704",
    )
    arguments = parser.parse_args()
    arguments.output = arguments.output or tracker_weights_path(arguments.encoder, arguments.seed)
    train(arguments)
