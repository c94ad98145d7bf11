"""NNCF's accuracy-controlled int8 as an ``export --fastest`` candidate (``ov-int8-ac``), for labelled folders.

``nncf.quantize_with_accuracy_control`` quantizes an fp32 IR with the family's settings, then reverts layers to
float, most harmful first, until the top-1 drop it measures is within the budget. It measures on the calibration
images (their sub-folders are the model's classes): the held-out images that ``--fastest`` judges every candidate
on are never shown to it, so its own claim is checked like any other candidate's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._extras import require
from .int8 import Int8Settings, nncf_options
from .metadata import ExportMetadata
from .openvino import RT_INFO, ignored_scope


def accuracy_controlled(
    fp32_ir: Path,
    path: Path,
    images: list[np.ndarray],
    labels: torch.Tensor,
    max_drop: float,
    settings: Int8Settings,
    batch: int | str,
) -> Path:
    """``fp32_ir`` (a litevit IR) quantized to int8 within ``max_drop`` top-1 points on ``images`` (``(1, C, H, W)``
    arrays) of classes ``labels``, written to ``path`` at ``batch`` (a size, or ``"dynamic"``)."""
    ov = require("openvino", "accuracy-controlled int8")
    nncf = require("nncf", "accuracy-controlled int8")
    model = ov.Core().read_model(str(fp32_ir))
    items = list(zip(images, labels.tolist(), strict=True))

    def top1(compiled: Any, data: Iterable[tuple[np.ndarray, int]]) -> float:
        hits = [int(np.argmax(compiled(x)[0]) == y) for x, y in data]
        return float(np.mean(hits))

    options = nncf_options(nncf, settings)
    options["advanced_quantization_parameters"] = options.pop("advanced_parameters")  # this function's name for it
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(max(level, logging.WARNING))
    try:
        quantized = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(images), nncf.Dataset(items), top1, max_drop=max_drop / 100,
            drop_type=nncf.DropType.ABSOLUTE, subset_size=len(images),
            ignored_scope=ignored_scope(nncf, model, settings), **options,
        )  # fmt: skip
    finally:
        nncf_log.setLevel(level)
    meta = ExportMetadata.from_json(model.get_rt_info(RT_INFO).astype(str))
    meta = dataclasses.replace(meta, precision="int8", inference_precision="f32", batch=batch)
    if batch != "dynamic":
        shape = [int(batch), *images[0].shape[1:]]
        quantized.reshape(shape)
    quantized.set_rt_info(meta.to_json(), RT_INFO)
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return path
