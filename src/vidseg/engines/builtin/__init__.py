"""The built-in CPU engine (frozen EfficientNet-Lite0 features, memory bank, matching)."""

from vidseg.engines.builtin.config import BuiltinConfig
from vidseg.engines.builtin.engine import BuiltinEngine

__all__ = ["BuiltinConfig", "BuiltinEngine"]
