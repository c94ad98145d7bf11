"""litevit: lightweight vision transformers, exactly as published, fast at inference."""

from . import models, zoo  # noqa: F401  (registers every family and the published weights)
from .backbone import backbone
from .checkpoint import CheckpointError, read_checkpoint
from .deploy import FuseError, fuse
from .export import export, quantize
from .features import FeatureInfo, features_only
from .hub import DownloadError
from .loading import ModelInfo, create_model, load, load_checkpoint
from .registry import DataConfig, Paper, Variant, get_variant, list_models
from .weights import Weights, get_weights, list_weights

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DataConfig",
    "DownloadError",
    "FeatureInfo",
    "FuseError",
    "ModelInfo",
    "Paper",
    "Variant",
    "Weights",
    "backbone",
    "create_model",
    "export",
    "features_only",
    "fuse",
    "quantize",
    "get_variant",
    "get_weights",
    "list_models",
    "list_weights",
    "load",
    "load_checkpoint",
    "read_checkpoint",
    "__version__",
]
