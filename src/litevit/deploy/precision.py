"""Inference precision of exported files: the choices and what runs on this CPU.

``--precision`` names what the file computes in: ``fp32``; ``bf16`` (an OpenVINO IR whose float math runs in bf16);
``int8`` (int8 weights and activations where the family's settings quantize, the rest in f32); ``int8-bf16`` (the
same int8 IR with its float parts in bf16). An OpenVINO IR records the float precision it was measured with
(``ExportMetadata.inference_precision``), and litevit's runner compiles it with that ``INFERENCE_PRECISION_HINT``.
OpenVINO itself does not read it from the file (2026.4 ignores an inference precision in an IR's
``runtime_options``), and its own default on a CPU with native bf16 is bf16: a plain OpenVINO user passes the hint
at compile time (README).

bf16 needs a CPU that computes it natively (AVX512_BF16 or AMX-BF16, read from what the CPU reports). Elsewhere a
bf16 file runs in f32, with one line that says so. What a precision costs in accuracy is measured for the model at
hand, on the user's images, by ``export --fastest`` (:mod:`.accuracy`); the per-family costs recorded on digits
(``tools/precision_costs.py``, ``benchmarks/accuracy/precision_costs.md``) are documentation, never the gate.
"""

from __future__ import annotations

import logging

from .._extras import has_native_bf16

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8", "int8-bf16")
OPENVINO_ONLY = ("bf16", "int8-bf16")  # onnxruntime's CPU provider has no bf16 execution of these graphs


def float_precision(precision: str) -> str:
    """OpenVINO's name of the precision the float parts of a ``precision`` file run in: ``f32`` or ``bf16``."""
    check_precision(precision)
    return "bf16" if precision in OPENVINO_ONLY else "f32"


def is_int8(precision: str) -> bool:
    check_precision(precision)
    return precision.startswith("int8")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")


def runnable(recorded: str | None, flags: frozenset[str] | None = None) -> str:
    """The OpenVINO inference precision to compile a file with here: its recorded one (``f32`` for files that record
    none), or ``f32`` for a bf16 file on a CPU without native bf16 (``flags``: the CPU's, default this one's)."""
    wanted = recorded or "f32"
    if wanted not in ("f32", "bf16"):
        raise ValueError(f"inference precision {wanted!r}: expected 'f32' or 'bf16'")
    if wanted == "bf16" and not has_native_bf16(flags):
        _warn_no_bf16()
        return "f32"
    return wanted


_warned: set[str] = set()


def _warn_no_bf16() -> None:
    if "bf16" not in _warned:  # one line per process, not one per file or compiled shape
        _warned.add("bf16")
        log.warning("this CPU has no native bf16 (no AVX512_BF16, no AMX-BF16): bf16 files run in f32 here")
