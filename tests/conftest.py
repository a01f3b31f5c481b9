"""Shared test settings."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def one_engine_thread():
    """Run the engine on one CPU thread. On a machine shared with other work, torch's default
    (a thread per core) can make each encoder call 100x slower as threads wait on each other;
    the tests check behaviour, not speed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
