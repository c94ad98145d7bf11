"""Deprecated name of :mod:`litevit.deploy.exporting` (the export story) and :mod:`litevit.deploy.builder` (one
file's builder), kept so that ``from litevit.deploy.export import export, ExportResult`` works; importing it warns.

Renamed because the module and its function shared the name ``litevit.deploy.export``. The package keeps
``litevit.deploy.export`` the function when this module is imported (``litevit/deploy/__init__.py``).
"""

from __future__ import annotations

import warnings
from typing import Any

from . import builder, exporting

warnings.warn(
    "the module litevit.deploy.export is renamed litevit.deploy.exporting (export, quantize, ExportResult) and "
    "litevit.deploy.builder (metadata_for, build_file); import from there, or export from litevit",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    for module in (exporting, builder):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
