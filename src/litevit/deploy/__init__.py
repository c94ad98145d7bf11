"""From a trained model to a file that runs elsewhere: fusing, export to every format, int8, and running the files."""

import sys
import types

from .errors import ExportError
from .exporting import export, quantize
from .fuse import FuseError, fuse
from .runtime import ExportedModel

__all__ = ["ExportError", "ExportedModel", "FuseError", "export", "fuse", "quantize"]


class _Package(types.ModuleType):
    """This package, whose ``export`` stays the function when the deprecated module ``deploy/export.py`` loads: the
    import system binds a loaded submodule to its parent's attribute of the same name."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "export" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
