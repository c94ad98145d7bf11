"""Parity of an exported graph against the fused PyTorch model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ExportError

RTOL = 1e-4  # parity: max |exported - pytorch| <= RTOL * max |pytorch|


@dataclass(frozen=True)
class ParityCheck:
    """The exported model against the fused PyTorch model on one random batch."""

    batch: int
    max_abs_diff: float
    max_rel_diff: float  # max |exported - pytorch| / max |pytorch|
    passed: bool
    agreement: float | None = None  # int8: share of images whose top-1 class equals the fp32 model's


def compare(exported: Any, reference: Any, batch: int, rtol: float = RTOL) -> ParityCheck:
    """Parity of one output, or the worst of several (a features model's maps)."""
    if isinstance(reference, (list, tuple)):
        if not isinstance(exported, (list, tuple)) or len(exported) != len(reference):
            raise ExportError(f"exported model does not return the {len(reference)} outputs of the PyTorch model")
        checks = [compare(e, r, batch, rtol) for e, r in zip(exported, reference, strict=True)]
        return max(checks, key=lambda check: (not check.passed, check.max_rel_diff))
    if exported.shape != reference.shape:
        raise ExportError(f"exported model returns shape {tuple(exported.shape)}, PyTorch {tuple(reference.shape)}")
    diff = (exported.float() - reference.float()).abs().max().item()
    scale = max(reference.abs().max().item(), 1e-12)
    return ParityCheck(batch, diff, diff / scale, diff <= rtol * scale)
