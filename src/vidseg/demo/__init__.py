"""The ``vidseg demo`` material: a synthetic video with exact ground truth, made on the spot."""

from vidseg.demo.synthetic import SyntheticVideo, render_synthetic_video, save_preview, write_mp4

__all__ = ["SyntheticVideo", "render_synthetic_video", "save_preview", "write_mp4"]
