"""What every exported file carries: the formats, their suffixes, and :class:`ExportMetadata`.

The metadata (variant, input size, data config, class names, precision) lets a file be used without litevit's
Python model: ONNX ``metadata_props``, the ``litevit.json`` extra file of TorchScript and pt2 archives, an IR's
``rt_info``, a ``.pte`` constant method, Core ML user metadata.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import eval_transform
from ..registry import DataConfig
from .precision import PRECISIONS

FORMATS = ("onnx", "torchscript", "pt2", "openvino", "executorch", "coreml")


SUFFIXES = {".onnx": "onnx", ".ts": "torchscript", ".torchscript": "torchscript", ".pt2": "pt2", ".xml": "openvino",
            ".pte": "executorch", ".mlpackage": "coreml"}  # fmt: skip


FIXED_BATCH_FORMATS = ("executorch", "coreml")  # "dynamic" exports these at batch 1


META_KEY = "litevit.json"  # TorchScript / pt2 extra file and ONNX metadata key holding ExportMetadata as JSON


@dataclass(frozen=True)
class CandidateRecord:
    """One candidate ``--fastest`` built, timed and measured (:class:`Selection`)."""

    route: str  # .routes.Route.name, or "ov-defaults" for the fp32 IR at OpenVINO's defaults
    ms: float | None  # median time per call at the selection's batch; None: not timed
    ratio: float | None  # the baseline's time / this time, median over interleaved rounds
    ratio_low: float | None  # its 95 % interval (sign-test order statistics of the per-round ratios)
    ratio_high: float | None
    agreement: float | None  # top-1 agreement with fp32 PyTorch on the held-out images; None: not measured
    top1: float | None  # percent on the held-out images, labelled folders only
    drop_bound: float | None  # one-sided 95 % upper bound of the drop, points
    decision: str  # chosen, eligible and slower, or why not eligible


@dataclass(frozen=True)
class Selection:
    """How ``litevit export --fastest`` chose the file: where, at what, among what, with what evidence."""

    route: str
    cpu: str  # the CPU model as it reports itself
    isa: tuple[str, ...]  # its vector and matrix instruction sets (litevit._extras.cpu_isa)
    threads: int
    batch: int  # the batch the candidates were timed at
    baseline: str  # the route speed-ups are measured against
    images: int  # held-out images every candidate ran on (0: no --calibration)
    fp32_top1: float | None  # fp32 PyTorch's top-1 on them, percent, labelled folders only
    max_drop: float
    confidence: float
    runtimes: str  # the runtime versions, e.g. "onnxruntime 1.31.1, openvino 2026.4.1"
    candidates: tuple[CandidateRecord, ...]
    note: str  # how the speed was decided (separated at 95 %, or what was preferred)


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported file needs to be used without litevit's Python model."""

    variant: str | None  # registered name, None for a model built outside the registry
    img_size: tuple[int, int]  # H, W the graph was exported for
    num_classes: int
    data: DataConfig  # preprocessing the weights expect
    batch: str | int  # "dynamic" or the fixed batch size
    format: str
    opset: int | None = None  # ONNX only
    litevit_version: str = ""
    torch_version: str = ""
    class_names: tuple[str, ...] | None = None  # the head's class names, when the weights name them
    precision: str = "fp32"  # what the file computes in: fp32, bf16, int8, int8-bf16 (.precision.PRECISIONS)
    # int8 onnxruntime files: 7 when the exporting CPU reported no VNNI (onnxruntime's reduce_range), else 8
    weight_bits: int | None = None
    # OpenVINO files: the inference precision of the float parts the file was measured with, and runs with in litevit
    inference_precision: str | None = None
    selection: Selection | None = None  # files written by export --fastest: how they were chosen

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ExportMetadata:
        """The metadata in ``text``; :class:`MetadataError` naming the first field that is missing, of the wrong
        type or out of range (a file's metadata is read as untrusted input)."""
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise MetadataError(f"litevit metadata is not valid JSON ({type(exc).__name__})") from None
        meta = _read_dataclass(cls, raw, "")
        _check_values(meta)
        return meta


class MetadataError(ValueError):
    """Exported-file metadata that is missing, mistyped, out of range or contradicts the graph; names the field."""


class _Mismatch(Exception):
    """A JSON value that is not of the expected type."""


def _read_dataclass(cls: type, raw: Any, prefix: str) -> Any:
    """``cls`` from a JSON object: every field typed by ``cls``'s annotations, lists read as tuples.

    At the top level a field with a default may be absent (files written before it was added); a nested record
    (``data``) is always written whole, so each of its fields is required.
    """
    if not isinstance(raw, dict):
        raise MetadataError(
            f"litevit metadata {prefix.rstrip('.') or 'root'}: expected a JSON object, got {_short(raw)}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, f in fields.items():
        required = prefix or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if required and name not in raw:
            raise MetadataError(f"litevit metadata field {prefix + name!r} is missing")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise MetadataError(f"litevit metadata field {prefix + unknown[0]!r} is unknown (written by a newer litevit?)")
    hints = typing.get_type_hints(cls)
    values = {}
    for name in [n for n in fields if n in raw]:  # in field order: the first bad field is reported
        record = _record_type(hints[name])
        if record is not None and not (raw[name] is None and hints[name] is not record):
            values[name] = _read_dataclass(record, raw[name], f"{prefix}{name}.")
            continue
        element = _record_type(typing.get_args(hints[name])[0]) if typing.get_origin(hints[name]) is tuple else None
        if element is not None:
            if not isinstance(raw[name], list):
                raise MetadataError(
                    f"litevit metadata field {prefix + name!r}: expected a list, got {_short(raw[name])}"
                )
            values[name] = tuple(_read_dataclass(element, r, f"{prefix}{name}[{i}].") for i, r in enumerate(raw[name]))
            continue
        try:
            values[name] = _typed(raw[name], hints[name])
        except _Mismatch:
            hint = hints[name]
            expected = hint.__name__ if isinstance(hint, type) else str(hint)  # int, or list[int, int] as JSON has
            expected = expected.replace("tuple[", "list[").replace("NoneType", "None").replace("None", "null")
            raise MetadataError(
                f"litevit metadata field {prefix + name!r}: expected {expected}, got {_short(raw[name])}"
            ) from None
    return cls(**values)


def _record_type(hint: Any) -> type | None:
    """The dataclass of a field typed as a dataclass or an optional one, else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        records = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return records[0] if records else None
    return None


def _typed(value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` (int, float, str, None, unions and tuples of those), or :class:`_Mismatch`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        for arm in args:
            try:
                return _typed(value, arm)
            except _Mismatch:
                pass
    elif origin is tuple and isinstance(value, list):
        if args[-1] is Ellipsis:
            return tuple(_typed(v, args[0]) for v in value)
        if len(value) == len(args):
            return tuple(_typed(v, a) for v, a in zip(value, args, strict=True))
    elif hint is type(None) and value is None:
        return None
    elif hint is str and isinstance(value, str):
        return value
    elif hint in (int, float) and isinstance(value, int | float) and not isinstance(value, bool):
        if hint is float and math.isfinite(value):
            return float(value)
        if hint is int and isinstance(value, int):
            return value
    raise _Mismatch


def _check_values(meta: ExportMetadata) -> None:
    """Ranges and agreement between fields, each failure naming its field."""

    def bad(name: str, expected: str, got: str) -> MetadataError:
        return MetadataError(f"litevit metadata field {name!r}: expected {expected}, got {got}")

    if meta.format not in FORMATS:
        raise bad("format", f"one of {', '.join(FORMATS)}", _short(meta.format))
    if min(meta.img_size) < 1:
        raise bad("img_size", "[height, width] of positive integers", _short(meta.img_size))
    if meta.num_classes < 0:
        raise bad("num_classes", "an integer >= 0 (0: features or pooled embeddings)", _short(meta.num_classes))
    if meta.batch != "dynamic" and not (isinstance(meta.batch, int) and meta.batch >= 1):
        raise bad("batch", "'dynamic' or a positive integer", _short(meta.batch))
    if meta.weight_bits not in (None, 7, 8):
        raise bad("weight_bits", "7, 8 or null", _short(meta.weight_bits))
    if meta.precision not in PRECISIONS:
        raise bad("precision", " or ".join(PRECISIONS), _short(meta.precision))
    if meta.inference_precision not in (None, "f32", "bf16"):
        raise bad("inference_precision", "'f32', 'bf16' or null", _short(meta.inference_precision))
    if meta.class_names is not None and len(meta.class_names) != meta.num_classes:
        raise bad("class_names", f"{meta.num_classes} names (num_classes)", f"{len(meta.class_names)} names")
    data = meta.data
    if data.img_size < 1:
        raise bad("data.img_size", "a positive integer", _short(data.img_size))
    if min(data.std) <= 0:
        raise bad("data.std", "three positive numbers", _short(data.std))
    try:  # the preprocessing's own checks: interpolation, channel order, crop_pct range
        eval_transform(data, 32)
    except ValueError as exc:
        raise MetadataError(f"litevit metadata field 'data': {exc}") from None


def _short(value: Any) -> str:
    """``value`` as JSON, cut to 60 characters (a tampered field may be long)."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_from(path: Path, format: str | None) -> str:
    if format is None:
        format = SUFFIXES.get(path.suffix.lower())
        if format is None:
            raise ValueError(
                f"cannot tell the export format from {path.name!r}; pass format= one of {', '.join(FORMATS)} "
                f"or use a suffix among {', '.join(SUFFIXES)}"
            )
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    return format
