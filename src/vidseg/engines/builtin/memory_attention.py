"""Learned memory read-out: a query frame attends to the memory frames' keys (STM / XMem style).

Keys are a learned projection of the encoder's stride-16 features, shared by every object, so
the affinity between a query frame and memory is computed once per frame whatever the number of
objects; only the value read-out is per object.
"""

from __future__ import annotations

import math

import torch
from torch import nn

KEY_CHANNELS = 64
#: How far below a row's best similarity a memory cell's logit is raised (see
#: :func:`memory_affinity`): e^-60 is far from float32's subnormal range (below e^-87).
SOFTMAX_RANGE = 60.0


class KeyProjection(nn.Module):
    """Stride-16 encoder features (112 channels for Lite0) to matching keys
    (``KEY_CHANNELS``): a linear map of each cell (``kernel_size`` 1, the shipped weights'), or
    of each cell and its eight neighbours (3, as STM's key encoder), so a key sees some of its
    cell's surroundings."""

    def __init__(
        self, in_channels: int = 112, key_channels: int = KEY_CHANNELS, kernel_size: int = 1
    ) -> None:
        super().__init__()
        self.projection = nn.Conv2d(in_channels, key_channels, kernel_size, 1, kernel_size // 2)

    def forward(self, features16: torch.Tensor) -> torch.Tensor:
        return self.projection(features16)


def memory_affinity(
    query_key: torch.Tensor, memory_keys: torch.Tensor, top_k: int = 0
) -> torch.Tensor:
    """Softmax attention weights of every query cell over every memory cell.

    ``query_key``: (N, C, H, W); ``memory_keys``: (N, C, M) for M memory cells. Returns
    (N, H*W, M), each row summing to one (the softmax runs over the contiguous last axis, which is
    several times faster than over the memory axis in the other layout). The similarity is the
    negative squared Euclidean distance (XMem found it steadier than the dot product); the
    query's own norm is constant over memory cells, so it drops out of the softmax. With
    ``top_k`` > 0, each query cell attends to its ``top_k`` most similar memory cells only (as
    in XMem), which keeps many weak matches from blurring the read-out.
    """
    channels = query_key.shape[1]
    query = query_key.flatten(2).transpose(1, 2)  # (N, HW, C)
    similarity = torch.baddbmm(
        -memory_keys.pow(2).sum(1, keepdim=True), query, memory_keys, alpha=2.0
    ) / math.sqrt(channels)
    if 0 < top_k < similarity.shape[2]:
        best, cells = similarity.topk(top_k, dim=2)
        return torch.zeros_like(similarity).scatter_(2, cells, torch.softmax(best, dim=2))
    # Far cells' weights would underflow into subnormal floats, which many x86 CPUs handle
    # in microcode, up to 100x slower (read-out 75 ms a frame instead of 9 on an Intel Xeon).
    # Raising every similarity to at least the row's best less SOFTMAX_RANGE keeps each weight
    # a normal float (>= e^-60) and changes the read-out by less than 1e-20.
    floor = similarity.amax(2, keepdim=True).detach() - SOFTMAX_RANGE
    return torch.softmax(torch.maximum(similarity, floor), dim=2)


def object_match_share(
    query_key: torch.Tensor,
    query_cells: torch.Tensor,
    memory_keys: torch.Tensor,
    memory_masks: torch.Tensor,
    min_cells: int = 8,
) -> float | None:
    """Of the query cells predicted as the object, the share whose nearest memory cell (by key)
    is an object cell rather than a background cell: a re-identification check.

    ``query_key`` (C, H, W); ``query_cells`` (H, W) bool, the predicted object; ``memory_keys``
    (C, M) and ``memory_masks`` (M,) the object's soft mask per memory cell. A mask on the
    right object scores high (0.7 is typical); one on another object that the read-out took
    for it scores near 0, since its cells look most like some background seen in memory.
    None when it cannot tell: fewer than ``min_cells`` object cells in memory or half that
    many predicted (a small object spans too few cells for the vote to mean anything), or no
    background in memory.

    >>> keys = torch.tensor([[0.0, 1.0]])  # two memory cells, 1 channel: background, object
    >>> query = torch.tensor([[[0.9, 0.1]]])  # (1, 1, 2): one object-like, one background-like
    >>> cells, masks = torch.tensor([[True, True]]), torch.tensor([0.0, 1.0])
    >>> object_match_share(query, cells, keys, masks, min_cells=1)
    0.5
    """
    objects, background = memory_masks >= 0.5, memory_masks <= 0.1
    if objects.sum() < min_cells or query_cells.sum() < min_cells / 2 or not background.any():
        return None
    query = query_key.flatten(1)[:, query_cells.flatten()]  # (C, S)
    # Squared distances less the query's own norm, which does not change the nearest cell.
    distance = memory_keys.pow(2).sum(0)[None] - 2 * query.T @ memory_keys  # (S, M)
    nearest_object = distance[:, objects].min(1).values
    nearest_background = distance[:, background].min(1).values
    return float((nearest_object < nearest_background).float().mean())


def read_values(
    affinity: torch.Tensor, memory_values: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Weighted memory values per query cell: (N or 1, HW, M) x (N, V, M) -> (N, V, H, W).

    An affinity with N = 1 is shared by all N value sets (several objects, one frame).
    """
    readout = torch.matmul(memory_values, affinity.transpose(1, 2))
    return readout.reshape(readout.shape[0], readout.shape[1], *size)
