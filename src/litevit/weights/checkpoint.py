"""Deprecated name of :mod:`litevit.weights.reading` (reading checkpoint files), kept so that old imports work.

Renamed because ``litevit.training.checkpoint`` (training state) shared the name; importing this module warns.
"""

from __future__ import annotations

import warnings
from typing import Any

from . import reading

warnings.warn(
    "litevit.weights.checkpoint is renamed litevit.weights.reading; import from there",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    return getattr(reading, name)
