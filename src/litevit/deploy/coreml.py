"""Core ML (``.mlpackage``) through the ``torch.export`` program, with litevit's metadata in the user metadata."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._extras import require
from .metadata import META_KEY

MAX_COREML_RANK = 5


COREML_PREDICTION_SKIP = "Core ML predictions run on macOS only (coremltools cannot load a model on this platform)"


def _ranks(mil_program: Any) -> dict[str, int]:
    """The largest rank each MIL operator type produces, over the whole program."""
    ranks: dict[str, int] = {}
    for function in mil_program.functions.values():
        for op in function.operations:
            for output in op.outputs:
                shape = getattr(output, "shape", None)
                if shape is not None:
                    ranks[op.op_type] = max(ranks.get(op.op_type, 0), len(shape))
    return ranks


def save_coreml(model: nn.Module, example: torch.Tensor, path: Path, meta_json: str) -> dict[str, int]:
    """Convert to a Core ML ML program at float32 and save it; returns the largest rank per operator type.

    coremltools converts the ``torch.export`` program (its TorchScript frontend fails on MobileViT's traced
    shape arithmetic). Raises ``ValueError`` when a tensor has rank above ``MAX_COREML_RANK``.
    """
    ct = require("coremltools", "Core ML export")
    program = torch.export.export(model, (example,)).run_decompositions({})
    converted = ct.convert(
        program,
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS16,
    )
    ranks = _ranks(converted._mil_program)
    too_high = {op: rank for op, rank in ranks.items() if rank > MAX_COREML_RANK}
    if too_high:
        raise ValueError(f"Core ML graph has tensors of rank > {MAX_COREML_RANK}: {too_high}")
    converted.user_defined_metadata[META_KEY] = meta_json
    converted.save(str(path))
    return ranks


def coreml_available() -> bool:
    """Whether Core ML can run predictions here (macOS with coremltools)."""
    return platform.system() == "Darwin"


def coreml_runner(path: str | os.PathLike) -> tuple[str, Callable[[torch.Tensor], Any]]:
    """The metadata JSON of a litevit ``.mlpackage`` and a function predicting with it (macOS only)."""
    ct = require("coremltools", "running a .mlpackage")
    if not coreml_available():
        raise RuntimeError(COREML_PREDICTION_SKIP)
    mlmodel = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
    meta = mlmodel.user_defined_metadata.get(META_KEY)
    if meta is None:
        raise ValueError(f"{path} was not exported by litevit (no {META_KEY!r} metadata)")
    description = mlmodel.get_spec().description
    feed, names = description.input[0].name, [output.name for output in description.output]

    def run(x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        result = mlmodel.predict({feed: x.numpy()})
        outputs = [torch.from_numpy(np.asarray(result[name])) for name in names]
        return outputs[0] if len(outputs) == 1 else outputs

    return meta, run
