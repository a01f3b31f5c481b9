"""vidseg: promptable video object segmentation, fast on a laptop CPU."""

__version__ = "0.14.0"
