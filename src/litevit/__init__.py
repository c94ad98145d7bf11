"""litevit: lightweight vision transformers, exactly as published, fast at inference."""

from . import models  # noqa: F401  (registers every family)
from ._version import __version__
from .backbone import backbone
from .bulk import predict_files
from .deploy import FuseError, export, fuse, quantize
from .models.features import FeatureInfo, features_only
from .registry import DataConfig, Paper, Variant, get_variant, list_models
from .weights import (
    CheckpointError,
    DownloadError,
    ModelInfo,
    Weights,
    create_model,
    get_weights,
    list_weights,
    load,
    load_checkpoint,
    push_to_hub,
    read_checkpoint,
    save_pretrained,
)

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
    "predict_files",
    "push_to_hub",
    "read_checkpoint",
    "save_pretrained",
    "__version__",
]
