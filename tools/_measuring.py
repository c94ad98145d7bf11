"""Shared by the measuring tools: files written for timing only, and one JSON line per record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

import litevit
from litevit.deploy.int8 import synthetic_calibration
from litevit.deploy.precision import is_int8


def speed_file(model: nn.Module, path: Path, precision: str, batch: int | str) -> Path:
    """``model`` exported to ``path`` at ``precision`` and ``batch``; int8 calibrated on noise images drawn into
    ``path``'s folder (16 of them used): only speed is measured with it."""
    size = model.config.img_size
    calibration = synthetic_calibration(size, size, parent=path.parent) if is_int8(precision) else None
    written = litevit.export(
        model, path, precision=precision, batch=batch, calibration=calibration, calibration_images=16
    )
    return written.path


def emit(record: dict[str, Any], out: Path | None) -> None:
    """Print ``record`` as a JSON line and, with ``out``, append the line to that file."""
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(line + "\n")
