"""Choosing an engine by name: the built-in one, or a transformers model."""

from __future__ import annotations

from vidseg.engines.base import Engine
from vidseg.errors import ModelError

BUILTIN = "builtin"


def load_engine(
    model: str = BUILTIN, *, device: str | None = None, dtype: str | None = None
) -> Engine:
    """The engine called ``model``: ``builtin`` (default), a name from
    :data:`vidseg.engines.hf.MODELS` (``sam2.1-hiera-tiny``, ``edgetam``, ``sam3-tracker``,
    ...) or the folder of a transformers checkpoint. ``device`` (``cpu``, ``cuda``; default:
    CUDA when present) and ``dtype`` (``float32``, ``bfloat16``, ``float16``) apply to the
    transformers models.

    >>> load_engine().name
    'builtin'
    """
    if model == BUILTIN:
        if device not in (None, "cpu") or dtype not in (None, "float32"):
            raise ModelError(
                "--device and --dtype apply to the transformers models; the built-in engine "
                "runs on the CPU in float32"
            )
        from vidseg.engines.builtin import BuiltinEngine

        return BuiltinEngine.shared()
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            f"model '{model}' runs through Hugging Face transformers, which is not installed: "
            "pip install 'vidseg[hf]'"
        ) from exc
    from vidseg.engines.hf import HFEngine

    return HFEngine.load(model, device=device, dtype=dtype)
