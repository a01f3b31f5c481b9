"""The memory bank: what the engine remembers of past frames during one propagation pass.

As in SAM 2 and XMem, frames the user prompted are kept for the whole pass (they are the ground
truth the tracker must never forget), while propagated frames enter a bounded FIFO of recent
frames. Memory therefore stays flat however long the video is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class MemoryFrame:
    """One remembered frame: its keys and each known object's soft mask.

    ``key16`` is (C, H16, W16); ``values16[obj]`` is the object's mask area-averaged to that grid.
    """

    frame_index: int
    prompted: bool
    key16: torch.Tensor
    values16: dict[int, torch.Tensor]


class MemoryBank:
    """Prompted frames, always kept, plus a FIFO of at most ``recent_capacity`` recent frames,
    and optionally the latest frame seen, when it is not in the FIFO (as STM keeps the previous
    frame beside every fifth).

    >>> bank = MemoryBank(recent_capacity=2)
    >>> for i in range(4):
    ...     bank.add(MemoryFrame(i, i == 0, torch.zeros(1, 1, 1), {}))
    >>> bank.add(MemoryFrame(4, False, torch.zeros(1, 1, 1), {}), latest_only=True)
    >>> [m.frame_index for m in bank.prompted], [m.frame_index for m in bank.recent]
    ([0], [2, 3])
    >>> [m.frame_index for m in bank]
    [0, 2, 3, 4]
    """

    def __init__(self, recent_capacity: int) -> None:
        self.prompted: list[MemoryFrame] = []
        self.recent: deque[MemoryFrame] = deque(maxlen=max(recent_capacity, 0) or None)
        self.latest: MemoryFrame | None = None
        self._recent_capacity = recent_capacity

    def add(self, memory: MemoryFrame, *, latest_only: bool = False) -> None:
        """Remember ``memory``: a prompted frame for good, else in the FIFO, or with
        ``latest_only`` only until the next frame comes."""
        if memory.prompted:
            # A new prompt on an already prompted frame replaces it: it is a correction.
            self.prompted = [m for m in self.prompted if m.frame_index != memory.frame_index]
            self.prompted.append(memory)
        elif latest_only:
            self.latest = memory
        elif self._recent_capacity > 0:
            self.recent.append(memory)
            self.latest = None  # the FIFO holds the latest frame now

    def object_ids(self) -> list[int]:
        ids: set[int] = set()
        for memory in self:
            ids.update(memory.values16)
        return sorted(ids)

    def __iter__(self) -> Iterator[MemoryFrame]:
        yield from self.prompted
        yield from self.recent
        if self.latest is not None:
            yield self.latest

    def __len__(self) -> int:
        return len(self.prompted) + len(self.recent) + (self.latest is not None)
