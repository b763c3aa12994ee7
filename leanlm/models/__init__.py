"""Model loading: bundled registry names, local directories and hub ids."""
from leanlm.models.embed import embed
from leanlm.models.loading import load
from leanlm.models.registry import BUNDLED, ModelSpec, model_names

__all__ = ["load", "embed", "BUNDLED", "ModelSpec", "model_names"]
