"""What every exported file carries: the formats, their suffixes, and :class:`ExportMetadata`.

The metadata (variant, input size, data config, class names, precision) lets a file be used without litevit's
Python model: ONNX ``metadata_props``, the ``litevit.json`` extra file of TorchScript and pt2 archives, an IR's
``rt_info``, a ``.pte`` constant method, Core ML user metadata.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..registry import DataConfig

FORMATS = ("onnx", "torchscript", "pt2", "openvino", "executorch", "coreml")


SUFFIXES = {".onnx": "onnx", ".ts": "torchscript", ".torchscript": "torchscript", ".pt2": "pt2", ".xml": "openvino",
            ".pte": "executorch", ".mlpackage": "coreml"}  # fmt: skip


FIXED_BATCH_FORMATS = ("executorch", "coreml")  # "dynamic" exports these at batch 1


META_KEY = "litevit.json"  # TorchScript / pt2 extra file and ONNX metadata key holding ExportMetadata as JSON


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
    precision: str = "fp32"  # "int8" for a quantized file

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ExportMetadata:
        raw = json.loads(text)
        data = raw.pop("data")
        data = DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        raw["img_size"] = tuple(raw["img_size"])
        if raw.get("class_names") is not None:
            raw["class_names"] = tuple(raw["class_names"])
        return cls(data=data, **raw)


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
