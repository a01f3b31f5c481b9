"""Keeping the C allocator from handing large buffers back to the kernel after every frame.

The per-frame path allocates the same few large tensors on every frame (the read-out's
affinity matrix alone is about 12 MB at 854x480). glibc's default policy serves such blocks
with ``mmap`` and returns them on ``free``, or trims them off the heap, so each frame
page-faults its working set back in: on this project's 2-core machine that was about a
million page faults per 200 frames and a fifth of the engine's time (``docs/BENCHMARKS.md``).
Raising the mmap threshold to its maximum and switching trimming off makes freed blocks stay
in the heap for the next frame. Peak memory does not change (the same blocks are reused);
the process just keeps its high-water mark instead of returning it between frames.

Set ``VIDSEG_MALLOC_TUNING=0`` to leave the allocator alone. Other C libraries (macOS,
Windows, musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: The largest mmap threshold glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2).
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
_NEVER_TRIM = 2**31 - 1

_lock = threading.Lock()
_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 32 MB for reuse, once per process.

    Returns whether the allocator is tuned (False off glibc, or with
    ``VIDSEG_MALLOC_TUNING=0``). Called by the engines when they load; calling it again does
    nothing.

    >>> from vidseg.engines.allocator import keep_freed_memory
    >>> keep_freed_memory() == keep_freed_memory()
    True
    """
    global _tuned
    with _lock:
        if _tuned is None:
            _tuned = _tune()
        return _tuned


def _tune() -> bool:
    if os.environ.get("VIDSEG_MALLOC_TUNING", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Both or neither: without the dynamic mmap threshold, a high trim threshold alone makes
    # every large block an mmap (measured: four times the page faults).
    if not mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
