"""Errors that vidseg raises for bad input.

Every message names the problem and how to fix it, so that the CLI can print it as one line.
"""

from __future__ import annotations


class VidsegError(Exception):
    """Base class of every error caused by the user's input (not by a bug in vidseg)."""


class VideoReadError(VidsegError):
    """A video, frame folder or array could not be read (missing, unreadable, truncated)."""


class PromptError(VidsegError):
    """A prompt is invalid: a point outside the frame, an empty mask, a wrong size, ..."""


class FrameIndexError(PromptError, IndexError):
    """A frame index lies outside the video."""


class UnknownObjectError(PromptError, KeyError):
    """An object id that the session does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OutputError(VidsegError):
    """An output cannot be written where it was asked for."""


class ModelError(VidsegError):
    """A model cannot be found, downloaded or loaded: an unknown name, a folder that is not a
    checkpoint, no network, not enough memory, a missing optional package."""
