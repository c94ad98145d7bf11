"""Published weights and the one loading layer: records, the zoo, downloads and cache, checkpoint files, loading."""

from . import zoo  # noqa: F401  (registers the published weights)
from .hf import push_to_hub, save_pretrained
from .hub import DownloadError
from .loading import ModelInfo, create_model, load, load_checkpoint
from .reading import CheckpointError, read_checkpoint
from .records import Weights, get_weights, list_weights

__all__ = [
    "CheckpointError",
    "DownloadError",
    "ModelInfo",
    "Weights",
    "create_model",
    "get_weights",
    "list_weights",
    "load",
    "load_checkpoint",
    "push_to_hub",
    "read_checkpoint",
    "save_pretrained",
]
