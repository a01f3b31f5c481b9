"""One propagation pass of the built-in engine: encode, read out from memory, decode, remember."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vidseg.engines.base import ObjectPrediction
from vidseg.engines.builtin.config import BuiltinConfig
from vidseg.engines.builtin.encoder import (
    EncodedFrame,
    ImageEncoder,
    encoder_input_size,
    normalize,
)
from vidseg.engines.builtin.memory_attention import (
    memory_affinity,
    object_match_share,
    read_values,
)
from vidseg.engines.builtin.memory_bank import MemoryBank, MemoryFrame
from vidseg.engines.builtin.network import TrackingNetwork
from vidseg.io import VideoInfo


@dataclass
class _QueryFrame:
    """What the network needs of the frame being processed, computed once per frame."""

    frame_index: int
    features: EncodedFrame
    key: torch.Tensor  # (1, C, h, w)
    query16: torch.Tensor  # (1, 64, h, w), the decoder's projection of the stride-16 features


class NetworkOutput(NamedTuple):
    """One object's prediction on a frame as a tracking network gives it."""

    probability: np.ndarray  # (H, W) float32 mask probability at the frame's resolution
    presence: float  # the presence head's probability
    cells16: torch.Tensor  # (h, w) the object's share of each key-grid cell (stride 16)


#: A part of a mask spanning fewer key cells (stride 16) than this is too small for
#: ``[presence] min_part_match`` to judge, and is kept.
MIN_PART_CELLS = 16


class MemoryTracker(ABC):
    """What both trackers share: the memory bank, which frames enter it, frame encoding at the
    configured size and the presence decision. Implements :class:`vidseg.engines.base.Tracker`
    once a subclass says how a frame is encoded for memory (:meth:`_memory_frame`) and read
    (``predict``)."""

    def __init__(self, encoder: ImageEncoder, config: BuiltinConfig, info: VideoInfo) -> None:
        self.encoder = encoder
        self.config = config
        self.frame_size = (info.height, info.width)
        self.input_size = encoder_input_size(info.height, info.width, config.encoder.long_side)
        self.memory = MemoryBank(config.memory.recent_frames)
        self._reference_area: dict[int, float] = {}
        # Each object's usual object_match (running mean over the frames where it clearly
        # matched; see _presence).
        self._usual_match: dict[int, float] = {}
        # Objects on the last frame that stay out of memory whatever remember_absent says:
        # judged absent by the re-identification check alone, or present with a presence
        # score under [memory] min_presence.
        self._unsure: set[int] = set()
        # Objects judged absent on the last frame, for whatever reason.
        self._absent: set[int] = set()
        self._frames_since_stored = 0
        #: Seconds spent in each stage of the per-frame path, summed over the pass (profiling).
        self.stage_seconds: dict[str, float] = defaultdict(float)
        #: [frame, its features], shared by trackers that run on the same frames with the same
        #: encoder (an ensemble's members), so that each frame is encoded once; None: not shared.
        self.shared_encoding: list | None = None

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[name] += time.perf_counter() - start

    def _encode_image(self, frame: np.ndarray) -> EncodedFrame:
        shared = self.shared_encoding
        if shared is not None and shared[0] is frame:
            return shared[1]
        height, width = self.input_size
        with self._stage("resize"):
            small = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            image = normalize(torch.from_numpy(small).permute(2, 0, 1)[None])
        with self._stage("encoder"), torch.inference_mode():
            features = self.encoder(image)
        if shared is not None:
            shared[:] = [frame, features]
        return features

    def remember(
        self,
        frame_index: int,
        frame: np.ndarray,
        masks: Mapping[int, np.ndarray],
        *,
        prompted: bool,
    ) -> None:
        # A propagated frame off the every-n-th schedule may still be kept as the latest one
        # (``keep_latest``), replaced by the next.
        latest_only = False
        if not prompted:
            self._frames_since_stored += 1
            if self._frames_since_stored < self.config.memory.every:
                if not self.config.memory.keep_latest:
                    return
                latest_only = True
            else:
                self._frames_since_stored = 0
            # An object judged absent stays out of this frame's memory (with remember_absent,
            # only one dropped by the re-identification check alone): a wrong "absent" in
            # memory would teach that the object is background and lose it for good. So does
            # one the tracker was unsure of (``_unsure``).
            left_out = (
                self._unsure if self.config.memory.remember_absent else self._unsure | self._absent
            )
            masks = {obj: mask for obj, mask in masks.items() if obj not in left_out}
            # A remnant (far smaller than the prompted object) stays out too: stored, it
            # teaches that the rest of the object is background.
            smallest = self.config.memory.min_area_ratio
            if smallest > 0:
                masks = {
                    obj: mask
                    for obj, mask in masks.items()
                    if mask.sum() >= smallest * self._reference_area.get(obj, 0.0)
                }
        if not masks:
            return
        if prompted:
            for obj, mask in masks.items():
                self._reference_area[obj] = float(mask.sum())
        self.memory.add(
            self._memory_frame(frame_index, frame, masks, prompted), latest_only=latest_only
        )

    @abstractmethod
    def _memory_frame(
        self, frame_index: int, frame: np.ndarray, masks: Mapping[int, np.ndarray], prompted: bool
    ) -> MemoryFrame:
        """The frame with its objects' masks, encoded for the memory bank."""

    def follow_presence(self, judge: MemoryTracker) -> None:
        """Take ``judge``'s latest presence decisions as this tracker's own: which objects
        enter memory depends on them, and an ensemble's members must store the same."""
        self._absent = set(judge._absent)
        self._unsure = set(judge._unsure)

    def _presence(
        self,
        obj: int,
        probability: np.ndarray,
        score: float | None = None,
        object_match: float | None = None,
    ) -> float:
        presence = self._judge_presence(obj, probability, score, object_match)
        if presence < 0.5:
            self._absent.add(obj)
        else:
            self._absent.discard(obj)
            if score is not None and presence < self.config.memory.min_presence:
                self._unsure.add(obj)  # shown, not learned (learned presence scores only)
        return presence

    def _judge_presence(
        self,
        obj: int,
        probability: np.ndarray,
        score: float | None = None,
        object_match: float | None = None,
    ) -> float:
        """The object's predicted presence: ``score`` (a learned presence probability) if
        given, else its mask's peak probability; below one half in any case when the mask
        shrank under ``min_area_ratio`` of its prompted area (a remnant, not the object: it is
        judged absent, hidden or out of view), or when it is smaller than ``match_max_area``
        of it and looks far less like the object than it usually does (``object_match``, from
        :func:`~vidseg.engines.builtin.memory_attention.object_match_share`, under
        ``min_object_match`` times its running mean: a ghost on something else)."""
        presence = self.config.presence
        self._unsure.discard(obj)  # set again below if the check alone drops the object
        if score is None:
            score = float(probability.max())
        area = float((probability >= presence.threshold).sum())
        reference = self._reference_area.get(obj, 0.0)
        if reference > 0 and area < presence.min_area_ratio * reference:
            return min(score, 0.49)
        if object_match is not None and reference > 0:
            # Relative to the object's own usual match: small or plain objects match less.
            usual = self._usual_match.get(obj, object_match)
            unlike = object_match < presence.min_object_match * usual
            if unlike and area < presence.match_max_area * reference:
                if score >= 0.5:
                    self._unsure.add(obj)
                return min(score, 0.49)
            # Only a clear match teaches what the object usually matches (above the midpoint
            # between the threshold and the mean): a ghost kept for its size alone, matching
            # just above the threshold, would otherwise drag the mean down frame by frame
            # until it passed as the object.
            like = object_match >= (1 + presence.min_object_match) / 2 * usual
            if score >= 0.5 and like:
                self._usual_match[obj] = 0.9 * usual + 0.1 * object_match
        return score


class BuiltinTracker(MemoryTracker):
    """The learned tracker: memory read-out by attention, mask decoder (see ``network.py``)."""

    def __init__(
        self,
        encoder: ImageEncoder,
        network: TrackingNetwork,
        config: BuiltinConfig,
        info: VideoInfo,
    ) -> None:
        super().__init__(encoder, config, info)
        self.network = network
        self._query: _QueryFrame | None = None
        # Each object's mask probability on the last frame it was prompted or predicted on,
        # at stride 4 (1, H/4, W/4), for a mask decoder that reads the previous frame's mask;
        # and the prompts' masks there, by frame, which stand in for the prediction on their
        # frame.
        self._previous: dict[int, torch.Tensor] = {}
        self._prompts4: dict[int, dict[int, torch.Tensor]] = defaultdict(dict)

    def _encode(self, frame_index: int, frame: np.ndarray) -> _QueryFrame:
        if self._query is None or self._query.frame_index != frame_index:
            features = self._encode_image(frame)
            with self._stage("projections"), torch.inference_mode():
                key = self.network.key_projection(features.stride16)
                query16 = self.network.mask_decoder.project_query(features.stride16)
            self._query = _QueryFrame(frame_index, features, key, query16)
        return self._query

    def _memory_frame(
        self, frame_index: int, frame: np.ndarray, masks: Mapping[int, np.ndarray], prompted: bool
    ) -> MemoryFrame:
        query = self._encode(frame_index, frame)
        height, width = self.input_size[0] // 4, self.input_size[1] // 4
        object_ids = list(masks)
        with self._stage("memory encoder"), torch.inference_mode():
            masks4 = np.stack(
                [
                    cv2.resize(
                        masks[obj].astype(np.float32), (width, height), interpolation=cv2.INTER_AREA
                    )
                    for obj in object_ids
                ]
            )
            features16 = query.features.stride16.expand(len(object_ids), -1, -1, -1)
            values = self.network.memory_encoder(features16, torch.from_numpy(masks4)[:, None])
        if prompted:
            # A prompt is what the next frame is decoded after (and, until a pass reaches a
            # prompted frame, the latest prompt is the best guess).
            for obj, mask4 in zip(object_ids, masks4, strict=True):
                self._previous[obj] = self._prompts4[frame_index][obj] = torch.from_numpy(mask4)[
                    None
                ]
        return MemoryFrame(
            frame_index, prompted, query.key[0], dict(zip(object_ids, values, strict=True))
        )

    def predict(self, frame_index: int, frame: np.ndarray) -> dict[int, ObjectPrediction]:
        return self.judge(self.network_outputs(frame_index, frame))

    def network_outputs(self, frame_index: int, frame: np.ndarray) -> dict[int, NetworkOutput]:
        """Each remembered object's mask probability and presence score on a frame, as the
        network gives them (before presence is judged)."""
        object_ids = self.memory.object_ids()
        if not object_ids:
            return {}
        query = self._encode(frame_index, frame)
        outputs: dict[int, NetworkOutput] = {}
        # Objects remembered on the same frames share one affinity matrix (usually all of them).
        entries = list(self.memory)
        for positions, group in _group_by_memory_entries(entries, object_ids).items():
            memory = [entries[i] for i in sorted(positions)]
            memory_keys = torch.cat([m.key16.flatten(1) for m in memory], 1)[None]
            # (objects, V, M): each object's values over the same memory cells.
            memory_values = torch.stack(
                [torch.cat([m.values16[obj].flatten(1) for m in memory], 1) for obj in group]
            )
            count = len(group)
            with self._stage("read-out"), torch.inference_mode():
                affinity = memory_affinity(query.key, memory_keys, self.config.memory.top_k)
                readout = read_values(affinity, memory_values, query.key.shape[-2:])
            with self._stage("decoder"), torch.inference_mode():
                decoded = self.network.mask_decoder(
                    readout,
                    query.query16.expand(count, -1, -1, -1),
                    query.features.stride8.expand(count, -1, -1, -1),
                    query.features.stride4.expand(count, -1, -1, -1),
                    query.features.stride2.expand(count, -1, -1, -1),
                    self._previous_masks(group, query),
                )
                self._remember_previous(frame_index, group, decoded.mask_logits)
            with self._stage("upsample"), torch.inference_mode():
                full = F.interpolate(
                    decoded.mask_logits, size=self.frame_size, mode="bilinear", align_corners=False
                )
                probabilities = torch.sigmoid(full)[:, 0].numpy()
                presences = torch.sigmoid(decoded.presence_logits).tolist()
                # The object's share of each key-grid cell (stride 16), for re-identification.
                cells = F.adaptive_avg_pool2d(
                    torch.sigmoid(decoded.mask_logits), query.key.shape[-2:]
                )[:, 0]
            for obj, probability, presence, cells16 in zip(
                group, probabilities, presences, cells, strict=True
            ):
                outputs[obj] = NetworkOutput(probability, presence, cells16)
        return outputs

    def judge(self, outputs: Mapping[int, NetworkOutput]) -> dict[int, ObjectPrediction]:
        """The predictions on the frame last encoded, from ``outputs`` (this network's, or an
        ensemble's average): loose parts dropped (``min_part_match``), presence judged."""
        if not outputs:
            return {}
        query = self._query
        assert query is not None  # network_outputs encoded the frame
        if self.config.presence.min_part_match > 0:
            with self._stage("parts"):
                outputs = {
                    obj: output._replace(
                        probability=self._drop_unmatched_parts(obj, query, output.probability)
                    )
                    for obj, output in outputs.items()
                }
        with self._stage("presence"):
            return {
                obj: ObjectPrediction(
                    output.probability,
                    self._presence(
                        obj,
                        output.probability,
                        output.presence,
                        self._object_match(obj, query, output.cells16 >= 0.5),
                    ),
                )
                for obj, output in outputs.items()
            }

    def _previous_masks(self, group: list[int], query: _QueryFrame) -> torch.Tensor | None:
        """The group's masks on the frame before (N, 1, H/4, W/4), for a decoder that reads
        them (an object with none yet reads an empty mask)."""
        if not self.network.mask_decoder.reads_previous_mask:
            return None
        empty = torch.zeros((1, *query.features.stride4.shape[-2:]))
        return torch.stack([self._previous.get(obj, empty) for obj in group])

    def _remember_previous(
        self, frame_index: int, group: list[int], mask_logits: torch.Tensor
    ) -> None:
        """Keep the group's masks on this frame at stride 4 for the next frame's decoding: an
        object's prompt here if it has one, else its predicted probability (as the network was
        trained: the raw prediction, whatever the presence decision)."""
        if not self.network.mask_decoder.reads_previous_mask:
            return
        stride = self.network.mask_decoder.output_stride
        probabilities = F.avg_pool2d(torch.sigmoid(mask_logits), 4 // stride)
        prompts = self._prompts4.get(frame_index, {})
        for obj, probability in zip(group, probabilities, strict=True):
            self._previous[obj] = prompts.get(obj, probability)

    def _drop_unmatched_parts(
        self, obj: int, query: _QueryFrame, probability: np.ndarray
    ) -> np.ndarray:
        """``probability`` without the parts of the object's mask (its connected regions) that
        look like the prompted frames' background rather than like the object (share of
        matching cells, :func:`object_match_share`, under ``min_part_match``). Such a part is
        usually a leak onto the background that has come loose from the object; left in, it
        enters memory as the object and stays. The largest part is always kept (an object
        seen much closer than when prompted matches little, yet is still the object), and so
        are parts spanning fewer than ``MIN_PART_CELLS`` key cells (and all parts of an
        object prompted smaller than twice that): seen through so few cells, a small part of
        the object (a kite apart from its flyer) looks like the background around it."""
        presence = self.config.presence
        mask = (probability >= presence.threshold).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        prompted = self._prompted_memory(obj)
        if count <= 2 or prompted is None:  # background and at most one part
            return probability
        memory_keys, memory_masks = prompted
        height, width = query.key.shape[-2:]
        # Fewer pixels than this cannot cover MIN_PART_CELLS cells a quarter each.
        fewest = MIN_PART_CELLS * 0.25 * mask.size / (height * width)
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        shares = {}
        for part in range(1, count):
            if part == largest or stats[part, cv2.CC_STAT_AREA] < fewest:
                continue
            # The key-grid cells a quarter or more covered by the part.
            cover = cv2.resize(
                (labels == part).astype(np.float32), (width, height), interpolation=cv2.INTER_AREA
            )
            with torch.inference_mode():
                share = object_match_share(
                    query.key[0],
                    torch.from_numpy(cover >= 0.25),
                    memory_keys,
                    memory_masks,
                    min_cells=2 * MIN_PART_CELLS,
                )
            if share is not None:
                shares[part] = share
        dropped = [part for part, share in shares.items() if share < presence.min_part_match]
        if not dropped:
            return probability
        return np.where(np.isin(labels, dropped), 0.0, probability).astype(np.float32)

    def _object_match(self, obj: int, query: _QueryFrame, cells: torch.Tensor) -> float | None:
        """How much the predicted mask looks like the object in its prompted frames (see
        :func:`object_match_share`); None when the check is off or cannot tell."""
        if self.config.presence.min_object_match <= 0:
            return None
        prompted = self._prompted_memory(obj)
        if prompted is None:
            return None
        with torch.inference_mode():
            return object_match_share(query.key[0], cells, *prompted)

    def _prompted_memory(self, obj: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The keys (C, M) of the memory cells of the frames where ``obj`` was prompted, and
        its mask on each (M,): what re-identification compares against. None if it has none."""
        prompted = [m for m in self.memory.prompted if obj in m.values16]
        if not prompted:
            return None
        return (
            torch.cat([m.key16.flatten(1) for m in prompted], 1),
            torch.cat([m.values16[obj][-1].flatten() for m in prompted]),
        )


def summed_stage_seconds(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Seconds per stage, summed over several trackers' ``stage_seconds``.

    >>> summed_stage_seconds([{"encoder": 1.0}, {"encoder": 0.5, "decoder": 2.0}])
    {'encoder': 1.5, 'decoder': 2.0}
    """
    total: dict[str, float] = defaultdict(float)
    for part in parts:
        for stage, seconds in part.items():
            total[stage] += seconds
    return dict(total)


def _group_by_memory_entries(
    entries: list[MemoryFrame], object_ids: list[int]
) -> dict[frozenset[int], list[int]]:
    """Objects grouped by the memory entries (positions in ``entries``) that hold them. By
    entry, not by frame index: a frame can be in memory twice, as a prompt that names some
    objects and as a propagated frame that names them all."""
    groups: dict[frozenset[int], list[int]] = {}
    for obj in object_ids:
        positions = frozenset(i for i, m in enumerate(entries) if obj in m.values16)
        groups.setdefault(positions, []).append(obj)
    return groups


class EnsembleTracker:
    """Several learned trackers on one pass, each with its own network (the same recipe trained
    with different seeds) and memory, sharing each frame's encoding. Their mask probabilities,
    presence scores and key-grid masks are averaged, and the first member judges presence on
    the average; every member then stores the same final masks. Averaging two seeds' networks
    cancels much of what one seed gets wrong by chance (docs/BENCHMARKS.md, "Two networks").
    Implements :class:`vidseg.engines.base.Tracker`."""

    def __init__(self, members: list[BuiltinTracker]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one tracker")
        self.members = members
        shared: list = [None, None]
        for member in members:
            member.shared_encoding = shared

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage summed over the members (the shared encoder counted once)."""
        return summed_stage_seconds(member.stage_seconds for member in self.members)

    def remember(
        self,
        frame_index: int,
        frame: np.ndarray,
        masks: Mapping[int, np.ndarray],
        *,
        prompted: bool,
    ) -> None:
        for member in self.members:
            member.remember(frame_index, frame, masks, prompted=prompted)

    def predict(self, frame_index: int, frame: np.ndarray) -> dict[int, ObjectPrediction]:
        outputs = [member.network_outputs(frame_index, frame) for member in self.members]
        judge = self.members[0]
        with judge._stage("ensemble"):
            averaged = {
                obj: NetworkOutput(
                    np.mean([output[obj].probability for output in outputs], axis=0),
                    float(np.mean([output[obj].presence for output in outputs])),
                    torch.stack([output[obj].cells16 for output in outputs]).mean(0),
                )
                for obj in outputs[0]
            }
        predictions = judge.judge(averaged)
        for member in self.members[1:]:
            member.follow_presence(judge)
        return predictions
