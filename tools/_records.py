"""Shared by the measuring tools: one JSON line per record, printed and appended to ``--out``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(record: dict[str, Any], out: Path | None) -> None:
    """Print ``record`` as a JSON line and, with ``out``, append the line to that file."""
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(line + "\n")
