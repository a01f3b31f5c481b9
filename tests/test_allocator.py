"""The allocator tuning: freed large blocks are reused instead of page-faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from vidseg.engines.allocator import keep_freed_memory

# Computes a softmax over a 12 MB matrix (the size of the read-out's affinity matrix at
# 854x480) 20 times, as the per-frame path does, and prints the page faults per time.
_FAULTS_PER_FRAME = """
import resource
import numpy as np
from vidseg.engines.allocator import keep_freed_memory
tuned = keep_freed_memory()
def frame():
    similarity = np.ones((720, 4320), np.float32)
    weights = np.exp(similarity - similarity.max(1, keepdims=True))
    return (weights / weights.sum(1, keepdims=True)).sum()
frame()  # the first time faults its blocks in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    frame()
print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_frame(tuning: str) -> tuple[bool, float]:
    env = {**os.environ, "VIDSEG_MALLOC_TUNING": tuning}
    output = subprocess.run(
        [sys.executable, "-c", _FAULTS_PER_FRAME],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return output[0] == "True", float(output[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning is for glibc only")
def test_freed_blocks_are_reused_without_page_faults() -> None:
    tuned, faults = _faults_per_frame("1")
    untuned, default_faults = _faults_per_frame("0")
    assert tuned and not untuned
    # 12 MB is about 2,900 pages of 4 KB: each reallocation faults them all in by default.
    assert default_faults > 1000
    assert faults < 50


def test_tuning_is_idempotent() -> None:
    assert keep_freed_memory() == keep_freed_memory()
