"""The built-in CPU engine (frozen EfficientNet-Lite features, memory bank, learned tracker)."""

from vidseg.engines.builtin.config import BuiltinConfig
from vidseg.engines.builtin.engine import BuiltinEngine

__all__ = ["BuiltinConfig", "BuiltinEngine"]
