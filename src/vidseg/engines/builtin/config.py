"""Settings of the built-in engine, read from ``default.toml`` beside this file.

Configs live apart from code so that a benchmark or a user can try other values without
editing the engine: ``BuiltinConfig.load(overrides={"readout": {"top_k": 30}})``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vidseg.engines.builtin.encoder import DEFAULT_PROMPT_VARIANT, DEFAULT_VARIANT, encoder_variant
from vidseg.engines.builtin.network import prompt_weights_path, shipped_tracker_weights

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default.toml")


def _check_weights_file(section: str, weights: str, trainer: str, setting: str = "weights") -> None:
    if weights and not Path(weights).is_file():
        raise ValueError(
            f"[{section}] {setting}: no file {weights!r}; give a file written by {trainer}, "
            "or leave it empty for the shipped weights"
        )


@dataclass(frozen=True)
class TrackerConfig:
    # "learned": memory read-out and mask decoder trained on DAVIS train (weights ship with the
    # package). "matching": the training-free label propagation by feature matching, kept as a
    # reference (the [readout] and [refine] sections apply to it only).
    kind: str = "learned"
    # The learned tracker's weights: "" for the ones that ship with vidseg, or a file written
    # by training/train_tracker.py (to compare recipes), or several such files separated as in
    # PATH (":" on Linux and macOS, ";" on Windows), whose networks are averaged (as the
    # shipped ones are).
    weights: str = ""
    # How many of those networks run, from the first: 0 = all of them. Two ship for Lite2
    # (seeds 0 and 1, averaged: docs/BENCHMARKS.md, "Two networks"); 1 runs seed 0's alone,
    # faster and less accurate.
    members: int = 0
    # The thin-part refiner (thin_parts.py) redraws, at the frame's resolution, the thin parts
    # (lines, spokes) of each object whose mask on the frame before has at least this share
    # of its pixels in parts a few pixels wide; 0 = off. Learned tracker only.
    thin_parts: float = 0.0
    # Its weights: "" for the ones that ship with vidseg, or a file written by
    # training/train_thin_parts.py.
    thin_parts_weights: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.thin_parts <= 1:
            raise ValueError(f"[tracker] thin_parts must be in [0, 1], not {self.thin_parts}")
        _check_weights_file(
            "tracker", self.thin_parts_weights, "training/train_thin_parts.py", "thin_parts_weights"
        )
        if self.kind not in ("learned", "matching"):
            raise ValueError(f"[tracker] kind must be 'learned' or 'matching', not {self.kind!r}")
        for weights in self.weights.split(os.pathsep):
            _check_weights_file("tracker", weights.strip(), "training/train_tracker.py")
        if self.members < 0:
            raise ValueError(
                f"[tracker] members must be 0 (all networks) or more, not {self.members}"
            )

    def weights_files(self, variant: str) -> list[Path]:
        """The networks to run for encoder ``variant``: the named files or the shipped ones,
        the first ``members`` of them."""
        if self.weights:
            files = [Path(weights.strip()) for weights in self.weights.split(os.pathsep)]
        else:
            files = shipped_tracker_weights(variant)
        return files[: self.members] if self.members else files


@dataclass(frozen=True)
class PromptsConfig:
    # How clicks and boxes become a mask. "learned" (the default): the prompt decoder trained
    # on DAVIS train and on procedurally drawn shapes (docs/BENCHMARKS.md, "clicks").
    # "grabcut": feature similarity around the clicks, then GrabCut; needs no training, and
    # is 5x slower and less accurate on real footage.
    decoder: str = "learned"
    # The learned decoder's weights: "" for the ones that ship with vidseg, or a file written
    # by training/train_prompts.py (to compare recipes).
    weights: str = ""
    # A click the learned decoder ignored still flips a disc around it (as wide as the mask is
    # uniform there), at most this share of the frame's longer side in radius; 0 = off.
    honour_clicks: float = 0.02
    # The encoder whose features the learned decoder reads. It may differ from the tracker's
    # ([encoder] variant): prompted frames are then encoded once more, by this encoder. Lite0
    # ships: the decoder trained on Lite2 features lost the synthetic shapes' boxes
    # (docs/BENCHMARKS.md, "A larger encoder"); "lite2" needs weights from
    # train_prompts.py --encoder lite2.
    encoder: str = DEFAULT_PROMPT_VARIANT
    # A small object (once there is a mask or a box to size it by) is decoded in a window
    # this many times its size about its centre, at a finer resolution than in the whole
    # frame; 0 = always the whole frame.
    zoom_context: float = 3.0
    # The learned decoder's mask (one cell per 4 encoder-input pixels) is redrawn at the
    # frame's own resolution by the mask refiner (mask_refiner.py), meant to let thin parts
    # (lines, spokes, limbs) be selected at all. Off by default: not better on val yet.
    refine: bool = False
    # The refiner's weights: "" for the ones that ship with vidseg, or a file written by
    # training/train_refiner.py.
    refiner_weights: str = ""

    def __post_init__(self) -> None:
        encoder_variant(self.encoder)  # raises, naming the choices
        if self.zoom_context and self.zoom_context < 1:
            raise ValueError(
                f"[prompts] zoom_context must be 0 (off) or at least 1, not {self.zoom_context}"
            )
        if self.decoder == "learned" and not self.weights:
            if not prompt_weights_path(self.encoder).is_file():
                raise ValueError(
                    f"[prompts] encoder = {self.encoder!r}: no prompt decoder for it ships with "
                    "vidseg; train one (training/train_prompts.py --encoder "
                    f"{self.encoder}) and name it in [prompts] weights"
                )
        if not 0 <= self.honour_clicks <= 1:
            raise ValueError(f"[prompts] honour_clicks must be in [0, 1], not {self.honour_clicks}")
        if self.decoder not in ("grabcut", "learned"):
            raise ValueError(
                f"[prompts] decoder must be 'grabcut' or 'learned', not {self.decoder!r}"
            )
        _check_weights_file("prompts", self.weights, "training/train_prompts.py")
        _check_weights_file(
            "prompts", self.refiner_weights, "training/train_refiner.py", "refiner_weights"
        )


@dataclass(frozen=True)
class EncoderConfig:
    # The encoder sees frames scaled so that their longer side is this many pixels
    # (rounded to a multiple of 16): the main speed/quality trade-off of the engine.
    long_side: int = 576
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    # What runs the encoder: "onnxruntime" (the shipped ONNX export; fastest on CPU) or
    # "torchscript" (the PyTorch module, traced and frozen). Same features to about 1e-4.
    runtime: str = "onnxruntime"
    # Which EfficientNet-Lite: "lite0" or "lite2" (1.1x wider, 1.2x deeper). The learned
    # tracker's weights are trained on one encoder's features; vidseg ships them for both.
    variant: str = DEFAULT_VARIANT

    def __post_init__(self) -> None:
        encoder_variant(self.variant)  # raises, naming the choices
        if self.runtime not in ("onnxruntime", "torchscript"):
            raise ValueError(
                f"[encoder] runtime must be 'onnxruntime' or 'torchscript', not {self.runtime!r}"
            )


@dataclass(frozen=True)
class MemoryConfig:
    recent_frames: int = 5  # size of the FIFO of recent frames (prompted frames are always kept)
    every: int = 1  # store every n-th propagated frame in the FIFO
    # Keep the latest propagated frame in memory too, when ``every`` leaves it out of the FIFO
    # (replaced by the next one): sparse memory for variety, the last frame for where things
    # are now.
    keep_latest: bool = False
    # Each query cell reads from its top_k most similar memory cells; 0 = all of them.
    # (The learned tracker only; the matching tracker has its own [readout] top_k.)
    top_k: int = 0
    # Whether a propagated frame on which an object was judged absent enters its memory
    # (with an empty mask). When it does, a wrong "absent" teaches the read-out that the
    # object is background, and the object may never be found again.
    remember_absent: bool = False
    # A propagated frame enters an object's memory only if its mask is at least this share of
    # the object's prompted area (0 = always).
    min_area_ratio: float = 0.1
    # Learned tracker: a propagated frame enters an object's memory only if the object's
    # presence score there (the presence head's) is at least this (0 = whenever it is judged
    # present): a frame the tracker is unsure of (often the first frame of an occluder, where
    # a ghost starts) is shown but not learned, so that it cannot make the next frames surer
    # of the ghost.
    min_presence: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_presence <= 1:
            raise ValueError(
                f"[memory] min_presence must be in [0, 1] (0 = off), not {self.min_presence}"
            )


@dataclass(frozen=True)
class ReadoutConfig:
    top_k: int = 10
    temperature: float = 0.01
    local_radius: float = 4.0  # window radius, in stride-16 cells, for matching recent frames
    query_stride: int = 8  # match the query frame at stride 8 (finer) or 16 (faster)
    stride8_weight: float = 0.5  # share of the stride-8 part in the key (rest: stride 16)


@dataclass(frozen=True)
class RefineConfig:
    guided_radius: int = 0  # guided-filter radius in full-resolution pixels; 0 disables
    guided_eps: float = 1e-2


@dataclass(frozen=True)
class PresenceConfig:
    # An object is judged absent when its area falls below this fraction of its prompted area.
    min_area_ratio: float = 0.02
    threshold: float = 0.5
    # Re-identification (learned tracker): the share of the predicted cells that look more
    # like the object than like the background of the prompted frames is tracked per object;
    # the object is judged absent when it falls under min_object_match times its usual value
    # while the mask is under match_max_area of the prompted area. That catches a "ghost":
    # another object, in a new scene or in front of the target, that the read-out took for
    # it. 0 disables.
    min_object_match: float = 0.0
    match_max_area: float = 0.7
    # A part of a predicted mask (a connected region, one of several) is dropped when under
    # this share of its cells look more like the object than like the background of the
    # prompted frames (0 disables): a leak onto the background that has come loose from the
    # object, which memory would otherwise learn as the object and keep. The largest part,
    # and parts under 16 key cells (tracker.MIN_PART_CELLS), always stay.
    min_part_match: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_part_match <= 1:
            raise ValueError(
                f"[presence] min_part_match must be in [0, 1] (0 = off), not {self.min_part_match}"
            )


@dataclass(frozen=True)
class BuiltinConfig:
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    presence: PresenceConfig = field(default_factory=PresenceConfig)

    @classmethod
    def load(
        cls,
        path: str | Path = DEFAULT_CONFIG_PATH,
        overrides: dict[str, dict[str, Any]] | None = None,
    ) -> BuiltinConfig:
        """Read a TOML config (sections named like the fields) and apply ``overrides``."""
        with open(path, "rb") as file:
            values = tomllib.load(file)
        for section, settings in (overrides or {}).items():
            values.setdefault(section, {}).update(settings)
        config = cls()
        for section_field in fields(cls):
            section = values.pop(section_field.name, {})
            current = getattr(config, section_field.name)
            known = {f.name for f in fields(current)}
            unknown = set(section) - known
            if unknown:
                raise ValueError(f"unknown setting(s) {sorted(unknown)} in [{section_field.name}]")
            config = replace(config, **{section_field.name: replace(current, **section)})
        if values:
            raise ValueError(f"unknown config section(s) {sorted(values)}")
        return config
