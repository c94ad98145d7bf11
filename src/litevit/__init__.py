"""litevit: lightweight vision transformers, exactly as published, fast at inference."""

from . import models  # noqa: F401  (registers every family)
from .backbone import backbone
from .checkpoint import CheckpointError, load_checkpoint, read_state_dict
from .deploy import FuseError, fuse
from .export import export
from .features import FeatureInfo, features_only
from .registry import DataConfig, Paper, Variant, create_model, get_variant, list_models

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DataConfig",
    "FeatureInfo",
    "FuseError",
    "Paper",
    "Variant",
    "backbone",
    "create_model",
    "export",
    "features_only",
    "fuse",
    "get_variant",
    "list_models",
    "load_checkpoint",
    "read_state_dict",
    "__version__",
]
