"""Choosing an engine by name: the built-in one, or a transformers model."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from vidseg.engines.base import Engine
from vidseg.errors import ModelError

BUILTIN = "builtin"


def load_engine(
    model: str = BUILTIN,
    *,
    device: str | None = None,
    dtype: str | None = None,
    config: str | Path | None = None,
) -> Engine:
    """The engine called ``model``: ``builtin`` (default), a name from
    :data:`vidseg.engines.hf.MODELS` (``sam2.1-hiera-tiny``, ``edgetam``, ``sam3-tracker``,
    ...) or the folder of a transformers checkpoint. ``device`` (``cpu``, ``cuda``; default:
    CUDA when present) and ``dtype`` (``float32``, ``bfloat16``, ``float16``) apply to the
    transformers models; ``config``, a TOML file of built-in engine settings that override
    its defaults (``src/vidseg/engines/builtin/default.toml`` lists them), to the built-in one.

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

        if config is None:
            return BuiltinEngine.shared()
        return BuiltinEngine(_read_builtin_config(Path(config)))
    if config is not None:
        raise ModelError(
            "--config sets the built-in engine; transformers models take --device and --dtype"
        )
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            f"model '{model}' runs through Hugging Face transformers, which is not installed: "
            "pip install 'vidseg[hf]'"
        ) from exc
    from vidseg.engines.hf import HFEngine

    return HFEngine.load(model, device=device, dtype=dtype)


def _read_builtin_config(path: Path):
    """The built-in engine's defaults with the settings of the TOML file at ``path``."""
    from vidseg.engines.builtin import BuiltinConfig

    try:
        with open(path, "rb") as file:
            settings = tomllib.load(file)
    except OSError as exc:
        raise ModelError(f"--config '{path}': cannot read it ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"--config '{path}' is not valid TOML: {exc}") from exc
    loose = [name for name, value in settings.items() if not isinstance(value, dict)]
    if loose:
        raise ModelError(
            f"--config '{path}': {', '.join(loose)} must go in a section such as [prompts] "
            "(vidseg's engines/builtin/default.toml lists them)"
        )
    for values in settings.values():  # a weights file is found relative to the config file
        weights = values.get("weights")
        if isinstance(weights, str) and weights:
            values["weights"] = os.pathsep.join(
                str(path.parent / name.strip()) for name in weights.split(os.pathsep)
            )
    try:
        return BuiltinConfig.load(overrides=settings)
    except (ValueError, TypeError) as exc:
        raise ModelError(
            f"--config '{path}': {exc} (vidseg's engines/builtin/default.toml lists the settings)"
        ) from exc
