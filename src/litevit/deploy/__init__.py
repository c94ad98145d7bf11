"""From a trained model to a file that runs elsewhere: fusing, export to every format, int8, and running the files."""

from .errors import ExportError
from .export import export, quantize
from .fuse import FuseError, fuse
from .runtime import ExportedModel

__all__ = ["ExportError", "ExportedModel", "FuseError", "export", "fuse", "quantize"]
