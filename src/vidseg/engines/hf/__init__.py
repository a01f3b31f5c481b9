"""SAM 2.1, EdgeTAM and the SAM 3 tracker through Hugging Face transformers (``pip install
'vidseg[hf]'``), behind the same session API, CLI and outputs as the built-in engine."""

from vidseg.engines.hf.engine import HFEngine, HFTracker
from vidseg.engines.hf.models import FAMILIES, MODELS
from vidseg.engines.hf.random_models import save_random_model

__all__ = ["FAMILIES", "MODELS", "HFEngine", "HFTracker", "save_random_model"]
