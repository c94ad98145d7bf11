"""OpenVINO IR: conversion of the fused model (int8 through NNCF when calibrated) and a runner for ``.xml`` files.

litevit's metadata lives in the IR's ``rt_info`` under ``litevit/json``. The runner compiles each input shape it
sees as a static graph, with the compile settings of :func:`openvino_config`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._extras import quiet_nncf, require
from .._files import replace_together, stage
from .embeddings import EMBEDDING, WithEmbeddings
from .int8 import DEFAULT_INT8_SETTINGS, Int8Settings, nncf_options, openvino_ends
from .onnx import OUTPUT_NAME
from .precision import runnable

RT_INFO = ["litevit", "json"]  # where an IR keeps litevit's metadata


def openvino_ir(
    fused: nn.Module,
    example: torch.Tensor,
    dynamic_batch: bool,
    metadata_json: str,
    calibration: list | None,
    settings: Int8Settings = DEFAULT_INT8_SETTINGS,
) -> Any:
    """The fused model as an OpenVINO model, int8 by NNCF with ``settings`` when ``calibration`` is given; a model
    from :func:`.embeddings.with_embeddings` has two outputs, named ``logits`` and ``embedding``."""
    ov = require("openvino", "OpenVINO export")
    shape = [-1 if dynamic_batch else example.shape[0], *example.shape[1:]]
    with torch.no_grad():
        model = ov.convert_model(fused, example_input=example, input=[ov.PartialShape(shape)])
    if isinstance(fused, WithEmbeddings):
        for port, name in zip(model.outputs, (OUTPUT_NAME, EMBEDDING), strict=True):
            port.get_tensor().set_names({name})
    if calibration is not None:
        nncf = require("nncf", "int8 quantization for OpenVINO")
        with quiet_nncf():
            model = _nncf_quantize(nncf, model, calibration, settings)
    model.set_rt_info(metadata_json, RT_INFO)
    return model


ATTENTION_OPS = ("ScaledDotProductAttention", "Softmax")


def attention_nodes(ir: Any, compiled: Any) -> dict[str, list[str]]:
    """Each attention op of the IR ``compiled`` was compiled from (``ScaledDotProductAttention``, ``Softmax``), by
    name, with the types of the CPU plugin's runtime nodes that run it: ``["Subgraph"]`` is an attention fused into
    one kernel, a list of several a split one, an empty list an op the plugin removed."""
    held: dict[str, list[str]] = {
        op.get_friendly_name(): [] for op in ir.get_ops() if op.get_type_name() in ATTENTION_OPS
    }
    for node in compiled.get_runtime_model().get_ops():
        info = node.get_rt_info()
        for name in info["originalLayersNames"].astype(str).split(","):
            if name in held:
                held[name].append(info["layerType"].astype(str))
    return held


def ignored_scope(nncf: Any, model: Any, settings: Int8Settings) -> Any:
    """The layers of an OpenVINO model that ``settings`` keep float, as NNCF's ignored scope."""
    return nncf.IgnoredScope(
        names=openvino_ends(model) if settings.float_ends else [],
        types=["GroupConvolution"] if settings.float_depthwise else [],
        validate=False,  # a family's settings may name layers that some of its variants lack
    )


def _nncf_quantize(nncf: Any, model: Any, calibration: list, settings: Int8Settings) -> Any:
    ignored = ignored_scope(nncf, model, settings)
    return nncf.quantize(
        model, nncf.Dataset(calibration), subset_size=len(calibration), ignored_scope=ignored,
        **nncf_options(nncf, settings),
    )  # fmt: skip


def save_openvino(model: Any, path: Path) -> None:
    """The IR ``path`` (.xml) and its .bin written as one set: into a staging folder beside them, then moved there
    together (:func:`litevit._files.replace_together`), so that a killed or failed write leaves the old pair or the
    new one, never one of each."""
    ov = require("openvino", "OpenVINO export")
    path = Path(path)
    staging = stage(path.parent, path.stem)
    try:
        ov.save_model(model, str(staging / path.name), compress_to_fp16=False)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_together(staging, [path.with_suffix(".bin").name, path.name])


_STATIC_SHAPES = 8  # compiled input shapes an OpenVINO runner keeps


def openvino_config(threads: int | None, precision: str | None = "f32") -> dict[str, Any]:
    """OpenVINO CPU compile settings for timing and parity: ``precision`` as the inference precision (``None``:
    OpenVINO's own default, bf16 on CPUs with native bf16), one latency-bound stream, and ``threads`` inference
    threads (``None``: OpenVINO's choice)."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def openvino_runner(path: str | os.PathLike, threads: int | None, precision: str | None = None) -> tuple[str, Any]:
    """The metadata JSON of an IR and a callable running it on CPU: its output, or its outputs in order.

    ``precision``: None compiles at the inference precision the file records (f32 for files that record none; bf16
    falls back to f32 on a CPU without native bf16, :func:`.precision.runnable`); ``"f32"`` or ``"bf16"`` forces one;
    ``"defaults"`` compiles with OpenVINO's own defaults, what a plain OpenVINO user gets.

    A dynamic-batch IR is compiled once per input shape it is called with, reshaped to that static shape: OpenVINO
    plans static graphs better (at batch 1, 1 thread, int8 / bf16: EfficientViT-M0 3.9x / 2.0x, LeViT-128S 1.19x /
    1.09x, MobileViT-XXS 1.19x / 1.18x faster than the dynamic graph; benchmarks/speed/static_batch.jsonl). Graphs with
    a resize (MobileViT at sides that are not multiples of its patch grid) stay dynamic: OpenVINO 2026.4's static
    Interpolate put MobileViT-XXS at 96 px 2.7e-4 relative off float64, the dynamic one 8e-7.
    """
    ov = require("openvino", f"running {Path(path).name}")
    core = ov.Core()
    model = core.read_model(str(path))
    if not model.has_rt_info(RT_INFO):
        raise ValueError(f"{path} was not exported by litevit (no litevit metadata in its rt_info)")
    meta = model.get_rt_info(RT_INFO).astype(str)
    if precision not in (None, "defaults", "f32", "bf16"):
        raise ValueError(f"inference precision {precision!r}: expected None, 'defaults', 'f32' or 'bf16'")
    configs: list[dict[str, Any]] = []  # decided at the first call, once the caller has validated the metadata
    requests: dict[tuple[int, ...], Any] = {}
    static_shapes = not any(op.get_type_name().startswith("Interpolate") for op in model.get_ops())

    def run(x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        shape = tuple(x.shape) if static_shapes else ()
        if shape not in requests:
            if len(requests) >= _STATIC_SHAPES:
                requests.pop(next(iter(requests)))
            static = model.clone()
            if shape:
                static.reshape(list(shape))
            if not configs:
                recorded = json.loads(meta).get("inference_precision")
                hint = None if precision == "defaults" else runnable(precision or recorded)
                configs.append(openvino_config(threads, hint))
            requests[shape] = core.compile_model(static, "CPU", configs[0]).create_infer_request()
        # one infer request per shape, reading the caller's tensor in place; each output buffer copied once
        result = requests[shape].infer({0: x.contiguous().numpy()}, share_inputs=True, share_outputs=True)
        outputs = [torch.from_numpy(np.array(result[i])) for i in range(len(model.outputs))]
        return outputs[0] if len(outputs) == 1 else outputs

    return meta, run
