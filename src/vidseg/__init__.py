"""vidseg: promptable video object segmentation, fast on a laptop CPU."""

__version__ = "0.13.0"
