"""Static post-training int8 and OpenVINO IR: calibration images, NNCF, onnxruntime QDQ.

Two int8 routes, both calibrated on images preprocessed with the model's own data config:

- OpenVINO (``.xml`` + ``.bin``), quantized by NNCF (optional extra ``litevit[openvino]``).
- onnxruntime QDQ (``.onnx``): ``quantize_static`` with uint8 activations and int8 weights (U8S8, the form
  onnxruntime's VNNI kernels run fastest) on MatMul, Conv and Gemm, after its ``quant_pre_process``; per-channel
  weights need opset 13.

What stays float and how ranges are calibrated is a per-family :class:`Recipe` (:data:`RECIPES`), each chosen by
the measurement of ``tools/int8_recipes.py`` kept in ``benchmarks/int8_recipes.md``. onnxruntime on CPUs without
VNNI: the weights use 7 bits (see :func:`onnx_int8`), chosen by what the CPU running the export has.

OpenVINO files run with inference precision pinned to f32 (``INFERENCE_PRECISION_HINT``), so that an fp32 IR is
compared with PyTorch at fp32 on CPUs with bf16 or AMX, where OpenVINO would otherwise run in bf16.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import ImageLoadError, eval_transform, load_image
from .registry import DataConfig

MIN_CALIBRATION_IMAGES = 8
DEFAULT_CALIBRATION_IMAGES = 300
_EXTRAS = {
    "openvino": "openvino",
    "nncf": "openvino",
    "onnxruntime": "export",
    "onnx": "export",
    "executorch": "executorch",
    "coremltools": "coreml",
}
_RT_INFO = ["litevit", "json"]  # where an IR keeps litevit's metadata


_ISA = {  # /proc/cpuinfo flag -> the name published next to a figure
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}


def cpu_isa() -> tuple[str, ...]:
    """The vector and matrix instruction sets of this CPU that int8 and bf16 kernels use (Linux; else empty)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return tuple(name for flag, name in _ISA.items() if flag in flags)


def has_vnni() -> bool:
    """Whether int8 dot products run in one instruction (VNNI); without it u8 x s8 products can saturate."""
    return bool({"AVX512-VNNI", "AVX-VNNI", "AMX-INT8"} & set(cpu_isa()))


class MissingExtraError(ImportError):
    """An optional dependency that is not installed; the message names the extra that installs it."""


class CalibrationError(ValueError):
    """Calibration images that cannot be used: missing, unreadable or too few."""


def require(module: str, purpose: str) -> Any:
    """Import an optional dependency, or raise one line naming the litevit extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = _EXTRAS.get(module.split(".")[0], module)
        raise MissingExtraError(f"{purpose} needs {module}: pip install 'litevit[{extra}]'") from None


def calibration_set(
    folder: str | os.PathLike, data: DataConfig, img_size: tuple[int, int], count: int = DEFAULT_CALIBRATION_IMAGES
) -> list[np.ndarray]:
    """Up to ``count`` images under ``folder`` (recursively, sorted), each preprocessed to a ``(1, C, H, W)`` array."""
    root = Path(folder)
    if not root.is_dir():
        raise CalibrationError(f"calibration folder not found: {root} (expected a folder of image files)")
    if count < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(f"--calibration-images must be at least {MIN_CALIBRATION_IMAGES}, got {count}")
    from torchvision.datasets.folder import IMG_EXTENSIONS

    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if len(files) < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(
            f"{root} has {len(files)} image file(s); calibration needs at least {MIN_CALIBRATION_IMAGES} "
            f"(suffixes {', '.join(IMG_EXTENSIONS)}), ideally a few hundred from the model's domain"
        )
    transform = eval_transform(data, img_size)
    batches, unreadable = [], []
    for path in files[:count]:
        try:
            batches.append(transform(load_image(path))[None].numpy())
        except ImageLoadError:
            unreadable.append(path.name)
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
        raise CalibrationError(f"{len(unreadable)} calibration image(s) under {root} cannot be read: {shown}")
    return batches


@dataclass(frozen=True)
class Recipe:
    """What a family's int8 graph keeps in float and how it is calibrated, for both int8 routes.

    ``transformer``: NNCF's ``ModelType.TRANSFORMER`` (softmax, norms, attention-bias adds and activation inputs stay
    float; SmoothQuant on MatMul inputs unless ``smooth_quant`` is off). ``preset``: NNCF ``"mixed"`` (symmetric
    weights, asymmetric activations) or ``"performance"`` (both symmetric). ``float_ends``: the first weighted layer
    and the classifier stay float. ``float_depthwise``: depthwise (grouped) convolutions stay float (OpenVINO's
    int8 ones lost EfficientViT and MobileViT v1/v3 3-12 points). onnxruntime: ``per_channel`` weights, activation
    ranges by ``calibration`` (``"minmax"`` or ``"percentile"``), ``onnx_float_ends`` as ``float_ends``.
    """

    transformer: bool = True
    smooth_quant: bool = True
    preset: str = "mixed"
    float_ends: bool = False
    float_depthwise: bool = False
    per_channel: bool = True
    calibration: str = "minmax"
    onnx_float_ends: bool = False


# chosen per family by tools/int8_recipes.py (benchmarks/int8_recipes.md: top-1 drops of models trained on drawn
# textures; the rule is in the tool); MobileViT's three versions are measured and chosen apart
RECIPES: dict[str, Recipe] = {
    # NNCF transformer type without SmoothQuant: drop 1.25 (with SmoothQuant 32.75, NNCF defaults 4.0);
    # onnxruntime with float ends 1.0 (percentile 0.75, 11 % slower at batch 1)
    "levit": Recipe(smooth_quant=False, onnx_float_ends=True),
    # depthwise convolutions float: 0.75 (NNCF defaults 4.25, every other NNCF candidate 4.25-12); onnxruntime 1.0
    "efficientvit_msra": Recipe(transformer=False, preset="performance", float_depthwise=True, onnx_float_ends=True),
    # depthwise convolutions float: 0.0 (every other NNCF candidate 12-15.75); onnxruntime percentile 0.25
    "mobilevit": Recipe(transformer=False, preset="performance", float_depthwise=True, calibration="percentile"),
    # NNCF mixed preset without the transformer type: 0.0 (defaults 1.0); onnxruntime per-tensor 0.0
    "mobilevitv2": Recipe(transformer=False, per_channel=False),
    # depthwise convolutions float: -0.5 (every other NNCF candidate 3.25-4.5); onnxruntime with float ends 0.5
    "mobilevitv3": Recipe(transformer=False, preset="performance", float_depthwise=True, onnx_float_ends=True),
    # trained 30 epochs (67.75 %): every candidate within 0.25 points of the best, the transformer type's -0.75
    # (agreement with fp32 97.5 %, NNCF defaults 95.2 %). The rule would take NNCF defaults, 5.2 % faster at batch 1
    # (2.50x against 2.37x, within the run's spread); at 224 px with random backbones and linear probes NNCF
    # defaults agreed with fp32 on 46-64 % of images against the transformer type's 61-80 % (T2T-ViT 7/10/12/14, two
    # runs with different random draws: benchmarks/int8_agreement*.jsonl), so T2T keeps the transformer type.
    # onnxruntime percentile -1.5
    "t2t_vit": Recipe(calibration="percentile"),
}
DEFAULT_RECIPE = Recipe()


def recipe_key(model: nn.Module) -> str:
    """The family of a litevit model, with MobileViT split into ``mobilevit``, ``mobilevitv2``, ``mobilevitv3``."""
    family = getattr(model, "family", "")
    name = getattr(model, "variant_name", None) or ""
    return name.split("_")[0] if family == "mobilevit" and name else family


def recipe_for(model: nn.Module) -> Recipe:
    """The measured recipe of the model's family (the default recipe for models of no registered family)."""
    return RECIPES.get(recipe_key(model), DEFAULT_RECIPE)


_WEIGHTED_OV = {"Convolution", "GroupConvolution", "MatMul"}


def _openvino_ends(model: Any) -> list[str]:
    """Names of the first weighted ops on every path from the input and the last on every path to the output."""

    def walk(start: list[Any], step: Any) -> set[str]:
        found, seen, todo = set(), set(), list(start)
        while todo:
            node = todo.pop()
            if node.get_friendly_name() in seen:
                continue
            seen.add(node.get_friendly_name())
            if node.get_type_name() in _WEIGHTED_OV:
                found.add(node.get_friendly_name())
            else:
                todo += step(node)
        return found

    def consumers(node: Any) -> list[Any]:
        return [i.get_node() for out in node.outputs() for i in out.get_target_inputs()]

    def producers(node: Any) -> list[Any]:
        return [i.get_source_output().get_node() for i in node.inputs()]

    first = walk([c for p in model.get_parameters() for c in consumers(p)], consumers)
    last = walk([q for r in model.get_results() for q in producers(r)], producers)
    return sorted(first | last)


def _onnx_ends(model: Any) -> list[str]:
    """The ONNX counterpart of :func:`_openvino_ends` (node names of Conv/MatMul/Gemm)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    users: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def walk(start: list[Any], step: Any) -> set[str]:
        found, seen, todo = set(), set(), list(start)
        while todo:
            node = todo.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in ("Conv", "MatMul", "Gemm"):
                found.add(node.name)
            else:
                todo += step(node)
        return found

    first = walk([n for i in model.graph.input for n in users.get(i.name, [])],
                 lambda n: [u for out in n.output for u in users.get(out, [])])  # fmt: skip
    last = walk([producer[o.name] for o in model.graph.output if o.name in producer],
                lambda n: [producer[i] for i in n.input if i in producer])  # fmt: skip
    return sorted(first | last)


def openvino_ir(
    deployed: nn.Module,
    example: torch.Tensor,
    dynamic_batch: bool,
    metadata_json: str,
    calibration: list | None,
    recipe: Recipe = DEFAULT_RECIPE,
) -> Any:
    """The fused model as an OpenVINO model, quantized to int8 by NNCF with ``recipe`` when ``calibration`` is given."""
    ov = require("openvino", "OpenVINO export")
    shape = [-1 if dynamic_batch else example.shape[0], *example.shape[1:]]
    with torch.no_grad():
        model = ov.convert_model(deployed, example_input=example, input=[ov.PartialShape(shape)])
    if calibration is not None:
        nncf = require("nncf", "int8 quantization for OpenVINO")
        nncf_log = logging.getLogger("nncf")
        level = nncf_log.level
        nncf_log.setLevel(max(level, logging.WARNING))  # NNCF logs a line per layer an ignored scope keeps float
        try:
            model = _nncf_quantize(nncf, model, calibration, recipe)
        finally:
            nncf_log.setLevel(level)
    model.set_rt_info(metadata_json, _RT_INFO)
    return model


def _nncf_quantize(nncf: Any, model: Any, calibration: list, recipe: Recipe) -> Any:
    ignored = nncf.IgnoredScope(
        names=_openvino_ends(model) if recipe.float_ends else [],
        types=["GroupConvolution"] if recipe.float_depthwise else [],
        validate=False,  # a family's recipe may name layers that some of its variants lack
    )
    return nncf.quantize(
        model,
        nncf.Dataset(calibration),
        preset=nncf.QuantizationPreset.MIXED if recipe.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        model_type=nncf.ModelType.TRANSFORMER if recipe.transformer else None,
        subset_size=len(calibration),
        ignored_scope=ignored,
        advanced_parameters=None if recipe.smooth_quant else _without_smooth_quant(nncf),
    )


def _without_smooth_quant(nncf: Any) -> Any:
    from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters

    return nncf.AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))


def save_openvino(model: Any, path: Path) -> None:
    require("openvino", "OpenVINO export").save_model(model, str(path), compress_to_fp16=False)


_STATIC_SHAPES = 8  # compiled input shapes an OpenVINO runner keeps


def openvino_config(threads: int | None) -> dict[str, Any]:
    """OpenVINO CPU compile settings for timing and parity: f32 inference precision, one latency-bound stream, and
    ``threads`` inference threads (``None``: OpenVINO's choice)."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def openvino_runner(path: str | os.PathLike, threads: int | None) -> tuple[str, Any]:
    """The metadata JSON of an IR and a callable running it on CPU at f32 inference precision.

    A dynamic-batch IR is compiled once per input shape it is called with, reshaped to that static shape: OpenVINO
    plans static graphs better (int8 at batch 1, 1 thread: EfficientViT-M0 1.45x, LeViT-128S 1.34x, MobileViT-XXS
    1.14x faster than the dynamic graph, measured interleaved on the machine of the README's figures). Graphs with
    a resize (MobileViT at sides that are not multiples of its patch grid) stay dynamic: OpenVINO 2026.4's static
    Interpolate put MobileViT-XXS at 96 px 2.7e-4 relative off float64, the dynamic one 8e-7.
    """
    ov = require("openvino", f"running {Path(path).name}")
    core = ov.Core()
    model = core.read_model(str(path))
    if not model.has_rt_info(_RT_INFO):
        raise ValueError(f"{path} was not exported by litevit (no litevit metadata in its rt_info)")
    meta = model.get_rt_info(_RT_INFO).astype(str)
    config = openvino_config(threads)
    requests: dict[tuple[int, ...], Any] = {}
    static_shapes = not any(op.get_type_name().startswith("Interpolate") for op in model.get_ops())

    def run(x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape) if static_shapes else ()
        if shape not in requests:
            if len(requests) >= _STATIC_SHAPES:
                requests.pop(next(iter(requests)))
            static = model.clone()
            if shape:
                static.reshape(list(shape))
            requests[shape] = core.compile_model(static, "CPU", config).create_infer_request()
        return torch.from_numpy(np.array(requests[shape].infer({0: x.numpy()})[0]))

    return meta, run


def calibration_reader(batches: list[np.ndarray], input_name: str) -> Any:
    """An onnxruntime ``CalibrationDataReader`` feeding ``batches`` to the input ``input_name``, once each."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    return Reader()


def onnx_int8(fp32: bytes, calibration: list[np.ndarray], input_name: str, recipe: Recipe = DEFAULT_RECIPE) -> bytes:
    """onnxruntime QDQ int8 (U8S8; per-channel weights by default) of an fp32 ONNX model (opset >= 13).

    Without VNNI, onnxruntime's AVX2/AVX-512 kernels add pairs of u8 x s8 products in 16 bits, which can saturate:
    weights are then quantized to 7 bits (``reduce_range``), as onnxruntime advises for such CPUs.
    """
    require("onnxruntime", "int8 quantization for onnxruntime")
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        source.write_bytes(fp32)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        excluded = _onnx_ends(require("onnx", "int8 quantization for onnxruntime").load(str(prepared)))
        quantize_static(
            str(prepared),
            str(out),
            calibration_reader(calibration, input_name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=recipe.per_channel,
            op_types_to_quantize=["MatMul", "Conv", "Gemm"],
            nodes_to_exclude=excluded if recipe.onnx_float_ends else None,
            calibrate_method=CalibrationMethod.Percentile
            if recipe.calibration == "percentile"
            else CalibrationMethod.MinMax,
            reduce_range=not has_vnni(),
        )
        return out.read_bytes()


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows whose top-1 class is the same in both logits."""
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())
