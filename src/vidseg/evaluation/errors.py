"""The error that evaluation raises for bad input (missing files, mismatched sizes, ...)."""

from __future__ import annotations

from vidseg.errors import VidsegError


class EvaluationError(VidsegError):
    """Predictions or ground truth cannot be evaluated: a missing file, a size mismatch, ..."""
