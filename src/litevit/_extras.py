"""Optional extras and the CPU's instruction sets: what the deploy and bench code may use on this machine.

:func:`require` imports an optional dependency or raises one line naming the ``litevit[extra]`` that installs it.
:func:`cpu_isa` reads the vector and matrix instruction sets the CPU reports (``/proc/cpuinfo``), so that code
paths are chosen by what the running CPU has, never by the machine that wrote the code.
:func:`quiet_nncf` keeps NNCF's per-layer log lines out of the output.
:func:`printable` escapes the control characters of text from outside before it is printed or logged.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import logging
import platform
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_EXTRAS = {
    "openvino": "openvino",
    "nncf": "openvino",
    "onnxruntime": "export",
    "onnx": "export",
    "executorch": "executorch",
    "coremltools": "coreml",
    "huggingface_hub": "hub",
    "pyarrow": "parquet",
    "ray": "ray",
}


_ISA = {  # /proc/cpuinfo flag -> the name published next to a figure
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (Linux; else empty)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_model() -> str:
    """The CPU's model name as the CPU reports it."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the kernel reports them (``/proc/cpuinfo``)."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_isa(flags: frozenset[str] | None = None) -> tuple[str, ...]:
    """The vector and matrix instruction sets among ``flags`` (default: this CPU's) that int8 and bf16 kernels use."""
    flags = cpu_flags() if flags is None else flags
    return tuple(name for flag, name in _ISA.items() if flag in flags)


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512_BF16 or AMX-BF16), from ``flags`` (default: this CPU's).

    Without it OpenVINO has no bf16 kernels worth running: a bf16 file then runs in f32.
    """
    return bool({"avx512_bf16", "amx_bf16"} & (cpu_flags() if flags is None else flags))


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether int8 dot products run in one instruction (VNNI) on a CPU with ``flags`` (default: this one's);
    without it u8 x s8 products can saturate."""
    return bool({"AVX512-VNNI", "AVX-VNNI", "AMX-INT8"} & set(cpu_isa(flags)))


class MissingExtraError(ImportError):
    """An optional dependency that is not installed; the message names the extra that installs it."""


@contextlib.contextmanager
def quiet_nncf() -> Iterator[None]:
    """NNCF's log held at WARNING and above for the block: NNCF logs a line per layer an ignored scope keeps float."""
    log = logging.getLogger("nncf")
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)


def available(module: str) -> bool:
    """Whether an optional dependency is installed (found, not imported)."""
    return importlib.util.find_spec(module) is not None


def extra_of(module: str) -> str:
    """The litevit extra that installs ``module``."""
    return _EXTRAS.get(module.split(".")[0], module)


def require(module: str, purpose: str) -> Any:
    """Import an optional dependency, or raise one line naming the litevit extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = extra_of(module)
        raise MissingExtraError(f"{purpose} needs {module}: pip install 'litevit[{extra}]'") from None


_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # controls, format (bidi overrides), surrogates, breaks


def printable(text: str) -> str:
    """``text`` safe to print or log on one terminal line: control and format characters are shown as Python escapes.

    For any text that came from outside (a server's reason phrase, archive member names, class names read from a
    file): printed raw, an escape sequence could move the cursor, recolour or erase the terminal, a newline or a
    bidirectional override could fake another message. ESC becomes ``\\x1b``, a newline ``\\n``, U+202E
    ``\\u202e``; letters of every script, spaces and backslashes are kept as they are.
    """
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in _UNPRINTABLE else ch for ch in text
    )
