"""Reading masks out of memory by space-time feature matching.

Memory is kept at stride 16 (few cells, so matching stays cheap); the query frame is matched at
stride 8 (``query_stride`` = 8) or 16. Each query cell is compared with
- every cell of the prompted frames (global: finds the object anywhere, which is what
  re-acquires it after an occlusion), and
- the cells of recent frames within ``local_radius`` cells of it (local: objects move little
  between recent frames, and the window keeps look-alikes elsewhere out).
The top-k affinities across all of memory go through one softmax, and the query's mask
probability is the weighted average of those memory cells' mask values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from vidseg.engines.builtin.encoder import EncodedFrame
from vidseg.engines.builtin.memory_bank import MemoryFrame


def frame_keys(features: EncodedFrame, stride8_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm keys at stride 16, (C, H16, W16), and at stride 8, (C, H8, W8).

    A key joins the stride-8 features (fine detail) and the stride-16 features (semantics),
    each L2-normalised and weighted so that the joint key has unit norm.
    """
    f8, f16 = features.stride8[0], features.stride16[0]
    w8, w16 = math.sqrt(stride8_weight), math.sqrt(1.0 - stride8_weight)
    pooled8 = F.avg_pool2d(f8[None], 2, ceil_mode=True)[0][:, : f16.shape[1], : f16.shape[2]]
    key16 = torch.cat([w8 * F.normalize(pooled8, dim=0), w16 * F.normalize(f16, dim=0)])
    up16 = F.interpolate(f16[None], size=f8.shape[1:], mode="bilinear", align_corners=False)[0]
    key8 = torch.cat([w8 * F.normalize(f8, dim=0), w16 * F.normalize(up16, dim=0)])
    return key16, key8


@lru_cache(maxsize=8)
def _outside_window(
    query_shape: tuple[int, int], memory_shape: tuple[int, int], radius: float
) -> torch.Tensor:
    """(Nq, Nm) bool: memory cells farther than ``radius`` memory cells from each query cell."""

    def centres(shape: tuple[int, int], scale_y: float, scale_x: float) -> torch.Tensor:
        ys = (torch.arange(shape[0]) + 0.5) * scale_y
        xs = (torch.arange(shape[1]) + 0.5) * scale_x
        return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)

    scale_y = memory_shape[0] / query_shape[0]
    scale_x = memory_shape[1] / query_shape[1]
    query = centres(query_shape, scale_y, scale_x)
    memory = centres(memory_shape, 1.0, 1.0)
    return torch.cdist(query, memory) > radius


def read_out(
    query: torch.Tensor,
    memories: Sequence[MemoryFrame],
    object_ids: Sequence[int],
    *,
    top_k: int,
    temperature: float,
    local_radius: float,
) -> dict[int, torch.Tensor]:
    """Each object's mask probability on the query frame (query's (H, W)), read from memory.

    ``query`` is (C, H, W) keys; memories hold (C, H16, W16) keys. An object only reads from
    memories that know it (an object first prompted on frame 50 has no mask on the frames
    remembered before that).
    """
    channels, height, width = query.shape
    queries = query.reshape(channels, -1).T  # (N, C)
    affinities, values, knows = [], [], []
    for memory in memories:
        memory_shape = tuple(memory.key16.shape[1:])
        affinity = queries @ memory.key16.reshape(channels, -1)  # (N, M)
        if not memory.prompted and local_radius > 0:
            outside = _outside_window((height, width), memory_shape, float(local_radius))
            affinity = affinity.masked_fill(outside, float("-inf"))
        cells = affinity.shape[1]
        values.append(
            torch.stack(
                [
                    memory.values16[i].reshape(-1) if i in memory.values16 else torch.zeros(cells)
                    for i in object_ids
                ]
            )
        )  # (objects, M)
        affinities.append(affinity)
        knows.append([i in memory.values16 for i in object_ids])

    probabilities: dict[int, torch.Tensor] = {}
    known = torch.tensor(knows, dtype=torch.bool).reshape(len(memories), len(object_ids))
    # Objects known by the same memories share one top-k and softmax.
    for signature in torch.unique(known, dim=1).T:
        members = [j for j in range(len(object_ids)) if torch.equal(known[:, j], signature)]
        used = [m for m in range(len(memories)) if signature[m]]
        if not used:
            for j in members:
                probabilities[object_ids[j]] = torch.zeros(height, width)
            continue
        affinity = torch.cat([affinities[m] for m in used], dim=1)
        top_values, top_indices = affinity.topk(min(top_k, affinity.shape[1]), dim=1)
        weights = torch.softmax(top_values / temperature, dim=1)  # (N, k)
        weights = torch.nan_to_num(weights)  # a query whose whole window lies outside
        value = torch.cat([values[m] for m in used], dim=1)  # (objects, M_total)
        for j in members:
            gathered = value[j][top_indices]  # (N, k)
            probabilities[object_ids[j]] = (weights * gathered).sum(1).view(height, width)
    return probabilities
