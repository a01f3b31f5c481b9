"""The tracking session: prompts in, per-frame masks out."""

from vidseg.session.prompts import ObjectPrompt
from vidseg.session.results import FrameResult
from vidseg.session.session import Direction, TrackingSession

__all__ = ["Direction", "FrameResult", "ObjectPrompt", "TrackingSession"]
