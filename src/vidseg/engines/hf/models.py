"""Which transformers models vidseg runs, where their checkpoints come from, and loading them.

A model is named (``sam2.1-hiera-tiny``, ``edgetam``, ``sam3-tracker``, ...: see
:data:`MODELS`) or given as a folder written by ``save_pretrained`` (``config.json`` and the
weights). A named model is downloaded into the Hugging Face cache the first time, and only
then, when the Hub can be reached and downloads are not switched off (``HF_HUB_OFFLINE=1``);
otherwise the error says what to download and where to put it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from vidseg.engines.hf.processing import (
    HALF_MEAN,
    HALF_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
)
from vidseg.errors import ModelError


@dataclass(frozen=True)
class ModelFamily:
    """One transformers video model class, with its inference session and input statistics."""

    title: str
    model_class: str
    session_class: str
    #: ``model_type`` values of the checkpoints' config.json that this class loads.
    config_types: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


FAMILIES: dict[str, ModelFamily] = {
    "sam2": ModelFamily(
        "SAM 2.1",
        "Sam2VideoModel",
        "Sam2VideoInferenceSession",
        ("sam2_video", "sam2"),
        IMAGENET_MEAN,
        IMAGENET_STD,
    ),
    "edgetam": ModelFamily(
        "EdgeTAM",
        "EdgeTamVideoModel",
        "EdgeTamVideoInferenceSession",
        ("edgetam_video", "edgetam"),
        IMAGENET_MEAN,
        IMAGENET_STD,
    ),
    "sam3": ModelFamily(
        "SAM 3 tracker",
        "Sam3TrackerVideoModel",
        "Sam3TrackerVideoInferenceSession",
        ("sam3_tracker_video", "sam3_video", "sam3_tracker", "sam3"),
        HALF_MEAN,
        HALF_STD,
    ),
}


@dataclass(frozen=True)
class NamedModel:
    """A model vidseg knows by name: its Hugging Face repository and family."""

    repo_id: str
    family: str
    note: str = ""


#: The models ``--model`` accepts by name (besides ``builtin`` and a checkpoint folder).
MODELS: dict[str, NamedModel] = {
    "sam2.1-hiera-tiny": NamedModel("facebook/sam2.1-hiera-tiny", "sam2"),
    "sam2.1-hiera-small": NamedModel("facebook/sam2.1-hiera-small", "sam2"),
    "sam2.1-hiera-base-plus": NamedModel("facebook/sam2.1-hiera-base-plus", "sam2"),
    "sam2.1-hiera-large": NamedModel("facebook/sam2.1-hiera-large", "sam2"),
    "edgetam": NamedModel(
        "yonigozlan/EdgeTAM-hf", "edgetam", "its RepViT image encoder needs `pip install timm`"
    ),
    "sam3-tracker": NamedModel(
        "facebook/sam3",
        "sam3",
        "gated: accept the licence on https://huggingface.co/facebook/sam3 and run "
        "`hf auth login` first",
    ),
}

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
#: What a download fetches: the model's config and weights, and its processor settings.
DOWNLOAD_PATTERNS = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
]
_TRUE = {"1", "true", "yes", "on"}


def known_models_text() -> str:
    return ", ".join(["builtin", *MODELS])


def downloads_disabled() -> bool:
    """True when the environment switches Hugging Face downloads off."""
    return any(
        os.environ.get(variable, "").strip().lower() in _TRUE
        for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def locate_checkpoint(model: str) -> Path:
    """The local folder holding ``model``: a name from :data:`MODELS` (downloaded if needed
    and allowed) or a checkpoint folder.

    >>> locate_checkpoint("sam9")
    Traceback (most recent call last):
    ...
    vidseg.errors.ModelError: unknown model 'sam9': known models are builtin, sam2.1-hiera-tiny, \
sam2.1-hiera-small, sam2.1-hiera-base-plus, sam2.1-hiera-large, edgetam, sam3-tracker, or give \
the folder of a checkpoint (config.json and the weights, as written by save_pretrained)
    """
    if model in MODELS:
        return _fetch(model, MODELS[model])
    path = Path(model).expanduser()
    if path.exists():
        return path
    if os.sep in model or "/" in model or model.startswith("."):
        raise ModelError(
            f"model folder '{model}' does not exist: give a folder written by save_pretrained "
            f"(config.json and the weights) or a model name ({known_models_text()})"
        )
    raise ModelError(
        f"unknown model '{model}': known models are {known_models_text()}, or give the folder "
        "of a checkpoint (config.json and the weights, as written by save_pretrained)"
    )


def _fetch(name: str, named: NamedModel) -> Path:
    """Download a named model into the Hugging Face cache, or find it there when offline."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    offline = downloads_disabled()
    how_to = (
        f"on a machine with internet run `hf download {named.repo_id} --local-dir {name}` "
        f"(pip install huggingface_hub), copy the folder '{name}' here and pass "
        f"--model path/to/{name}"
    )
    try:
        return Path(
            snapshot_download(
                named.repo_id, allow_patterns=DOWNLOAD_PATTERNS, local_files_only=offline
            )
        )
    except GatedRepoError as exc:
        raise ModelError(
            f"model '{name}' ({named.repo_id}) is gated: accept its licence on "
            f"https://huggingface.co/{named.repo_id}, run `hf auth login`, then try again"
        ) from exc
    except LocalEntryNotFoundError as exc:
        if offline:
            raise ModelError(
                f"model '{name}' is not downloaded and downloads are off (HF_HUB_OFFLINE): "
                f"{how_to}; or unset HF_HUB_OFFLINE to download it into the Hugging Face "
                f"cache ({constants.HF_HUB_CACHE})"
            ) from exc
        raise ModelError(
            f"model '{name}' is not downloaded and the Hugging Face Hub cannot be reached: {how_to}"
        ) from exc
    except (OSError, ValueError) as exc:  # HTTP errors are OSErrors; so are broken caches
        raise ModelError(
            f"could not download model '{name}' from {named.repo_id} ({exc}): {how_to}"
        ) from exc


@dataclass(frozen=True)
class Checkpoint:
    """A checked checkpoint folder: its family, input statistics and size."""

    directory: Path
    family_key: str
    config: dict
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights_bytes: int

    @property
    def family(self) -> ModelFamily:
        return FAMILIES[self.family_key]

    def preprocessing(self, image_size: int) -> Preprocessing:
        """Input processing for the loaded model's ``config.image_size`` (the config file
        may nest it: a SAM 3 checkpoint holds the detector's config and the tracker's)."""
        return Preprocessing(image_size=image_size, mean=self.mean, std=self.std)


def read_checkpoint(directory: Path) -> Checkpoint:
    """Check that ``directory`` holds a checkpoint vidseg can run, and read its settings."""
    if not directory.is_dir():
        raise ModelError(
            f"'{directory}' is a file, not a model folder: give the folder that holds "
            "config.json and the weights (model.safetensors)"
        )
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelError(
            f"'{directory}' is not a model checkpoint: it has no config.json. A checkpoint "
            "folder holds config.json and the weights (model.safetensors), as written by "
            "save_pretrained or `hf download REPO --local-dir DIR`"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read '{config_path}': {exc}") from exc
    weights = [directory / name for name in WEIGHT_FILES if (directory / name).is_file()]
    weights += sorted(directory.glob("model-*.safetensors"))
    if not weights:
        raise ModelError(
            f"'{directory}' has config.json but no weights: expected model.safetensors "
            "(or model-0000x-of-0000y.safetensors with their index)"
        )
    model_type = config.get("model_type")
    family_key = next(
        (key for key, family in FAMILIES.items() if model_type in family.config_types), None
    )
    if family_key is None:
        supported = ", ".join(t for f in FAMILIES.values() for t in f.config_types)
        raise ModelError(
            f"'{directory}' holds a '{model_type}' model, which vidseg cannot track with: "
            f"supported model types are {supported}"
        )
    family = FAMILIES[family_key]
    mean, std = family.mean, family.std
    # A downloaded checkpoint states its statistics; a bare folder uses the family's.
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        settings_path = directory / name
        if settings_path.is_file():
            settings = json.loads(settings_path.read_text())
            mean = tuple(settings.get("image_mean", mean))
            std = tuple(settings.get("image_std", std))
            break
    return Checkpoint(
        directory=directory,
        family_key=family_key,
        config=config,
        mean=mean,
        std=std,
        weights_bytes=sum(path.stat().st_size for path in weights if path.suffix != ".json"),
    )


def check_requirements(checkpoint: Checkpoint) -> None:
    """Fail early, with the fix, when a checkpoint needs a package that is missing."""
    backbone = checkpoint.config.get("vision_config", {}).get("backbone_config") or {}
    if backbone.get("model_type") == "timm_wrapper":
        import importlib.util

        if importlib.util.find_spec("timm") is None:
            raise ModelError(
                f"'{checkpoint.directory}' ({checkpoint.family.title}) builds its image "
                "encoder with timm, which is not installed: `pip install timm` (it needs "
                "torchvision, which brings a matching torch build)"
            )


def available_memory_bytes(device: str) -> int | None:
    """Free memory on the device: GPU memory for CUDA, MemAvailable for the CPU (Linux);
    ``None`` where it cannot be told."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


#: Room for one frame's activations and the memory bank, besides the weights.
WORKING_MEMORY_BYTES = 1 << 30


def check_memory(checkpoint: Checkpoint, device: str, bytes_per_weight: int) -> None:
    """Refuse to load a model that would not fit, instead of letting the machine swap or the
    process be killed."""
    stored_bytes_per_weight = 4  # checkpoints are stored in float32
    needed = checkpoint.weights_bytes * bytes_per_weight // stored_bytes_per_weight
    needed += WORKING_MEMORY_BYTES
    free = available_memory_bytes(device)
    if free is not None and needed > free:
        where = "GPU memory" if device.startswith("cuda") else "memory"
        raise ModelError(
            f"the model in '{checkpoint.directory}' needs about {needed / 2**30:.1f} GB of "
            f"{where} but only {free / 2**30:.1f} GB is free: use a smaller model "
            "(sam2.1-hiera-tiny, edgetam), --dtype bfloat16 on a GPU, or free memory"
        )
