"""Static post-training int8 and OpenVINO IR: calibration images, NNCF, onnxruntime QDQ.

Two int8 routes, both calibrated on images preprocessed with the model's own data config:

- OpenVINO (``.xml`` + ``.bin``), quantized by NNCF (optional extra ``litevit[openvino]``).
- onnxruntime QDQ (``.onnx``): ``quantize_static`` with uint8 activations and int8 weights (U8S8, the form
  onnxruntime's VNNI kernels run fastest) on MatMul, Conv and Gemm, after its ``quant_pre_process``; per-channel
  weights need opset 13.

What stays float and how ranges are calibrated is a per-family :class:`Int8Settings` (:data:`INT8_SETTINGS`), each
chosen by the measurement of ``tools/int8_settings.py`` kept in ``benchmarks/accuracy/int8_settings.md``. onnxruntime
on CPUs without VNNI: the weights use 7 bits (:func:`.onnx.reduce_range_here`), chosen by what the CPU running the
export reports and recorded in the file's metadata (``weight_bits``).

OpenVINO files run at the inference precision their metadata records (``inference_precision``: f32, or bf16 on a
CPU with native bf16; f32 for files that record none), set as ``INFERENCE_PRECISION_HINT``, so that an fp32 IR is
compared with PyTorch at fp32 on CPUs with bf16 or AMX, where OpenVINO would otherwise choose bf16
(:func:`.openvino.openvino_runner`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from torch import nn

from ..data import ImageLoadError, eval_transform, load_image
from ..registry import DataConfig, family_line, list_models

MIN_CALIBRATION_IMAGES = 8
DEFAULT_CALIBRATION_IMAGES = 300
INT8_CHECK_IMAGES = 32  # calibration-folder images the int8 check holds out of calibration, at most
MIN_CHECK_IMAGES = 8
CALIBRATION_SEED = 0


class CalibrationError(ValueError):
    """Calibration images that cannot be used: missing, unreadable or too few."""


T = TypeVar("T")


def image_groups(folder: str | os.PathLike) -> dict[Path, list[Path]]:
    """The image files under ``folder`` (by suffix) by the folder that holds them, each list sorted;
    :class:`CalibrationError` for a missing folder."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(folder)
    if not root.is_dir():
        raise CalibrationError(f"calibration folder not found: {root} (expected a folder of image files)")
    groups: dict[Path, list[Path]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS):
        groups.setdefault(path.parent, []).append(path)
    return groups


def deal(groups: Sequence[Sequence[T]], seed: int = CALIBRATION_SEED) -> list[T]:
    """The members of every group, each group shuffled with ``seed`` and the groups dealt from in turn: the first
    ``n`` drawn hold every group alike (the calibration draw of the int8 export and of ``--qat``)."""
    rng = np.random.default_rng(seed)
    shuffled = [[group[i] for i in rng.permutation(len(group))] for group in groups]
    return [group[i] for i in range(max(map(len, shuffled), default=0)) for group in shuffled if i < len(group)]


def calibration_files(
    folder: str | os.PathLike, count: int, held_out: int = 0, seed: int = CALIBRATION_SEED
) -> tuple[list[Path], list[Path]]:
    """Up to ``count`` image files under ``folder`` for calibration, and ``held_out`` others for the int8 check.

    Drawn alike from every sub-folder (a class-folder tree is calibrated on all its classes, not on the first in
    sorted order): each folder's files are shuffled with ``seed`` and the folders dealt from in turn. The held-out
    images are never calibration images: up to ``held_out`` of those calibration leaves over, and at least
    :data:`MIN_CHECK_IMAGES` (taken from calibration's share when the folder holds fewer than ``count`` + that).
    """
    root = Path(folder)
    if count < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(f"--calibration-images must be at least {MIN_CALIBRATION_IMAGES}, got {count}")
    groups = image_groups(root)
    total = sum(len(files) for files in groups.values())
    if total < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(
            f"{root} has {total} image file(s); calibration needs at least {MIN_CALIBRATION_IMAGES}, ideally a few "
            "hundred from the model's domain"
        )
    dealt = deal([files for _, files in sorted(groups.items())], seed)
    held = min(held_out, max(total - count, MIN_CHECK_IMAGES))
    if held_out and total - held < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(
            f"{root} has {total} image file(s); the int8 check holds {MIN_CHECK_IMAGES} of them out of calibration, "
            f"which needs {MIN_CALIBRATION_IMAGES}: at least {MIN_CALIBRATION_IMAGES + MIN_CHECK_IMAGES} (or no check)"
        )
    used = min(count, total - held)
    return dealt[:used], dealt[used : used + held]


def load_calibration(
    files: list[Path], data: DataConfig, img_size: tuple[int, int], folder: str | os.PathLike
) -> list[np.ndarray]:
    """Each of ``files`` (under ``folder``) preprocessed with the model's data config to a ``(1, C, H, W)`` array."""
    transform = eval_transform(data, img_size)
    batches, unreadable = [], []
    for path in files:
        try:
            batches.append(transform(load_image(path))[None].numpy())
        except ImageLoadError:
            unreadable.append(path.name)
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
        raise CalibrationError(f"{len(unreadable)} calibration image(s) under {folder} cannot be read: {shown}")
    return batches


def calibration_set(
    folder: str | os.PathLike, data: DataConfig, img_size: tuple[int, int], count: int = DEFAULT_CALIBRATION_IMAGES
) -> list[np.ndarray]:
    """Up to ``count`` images under ``folder``, drawn alike from its sub-folders (:func:`calibration_files`), each
    preprocessed to a ``(1, C, H, W)`` array."""
    return load_calibration(calibration_files(folder, count)[0], data, img_size, folder)


@dataclass(frozen=True)
class Int8Settings:
    """What a family's int8 graph keeps in float and how it is calibrated, for both int8 routes.

    ``transformer``: NNCF's ``ModelType.TRANSFORMER`` (softmax, norms, attention-bias adds and activation inputs stay
    float; SmoothQuant on MatMul inputs unless ``smooth_quant`` is off). ``preset``: NNCF ``"mixed"`` (symmetric
    weights, asymmetric activations) or ``"performance"`` (both symmetric). ``float_ends``: the first weighted layer
    and the classifier stay float. ``float_depthwise``: depthwise (grouped) convolutions stay float (OpenVINO's
    int8 ones lost EfficientViT and MobileViT v1/v3 3-12 points). onnxruntime: ``per_channel`` weights, activation
    ranges by ``calibration`` (``"minmax"`` or ``"percentile"``), ``onnx_float_ends`` as ``float_ends``. int8 ``.pte``
    (ExecuTorch's XNNPACK quantizer): ``pte_float_elementwise`` leaves elementwise adds and multiplies float (the
    residual stream and the norms' scale and shift, which NNCF's transformer type also leaves unquantized).
    """

    transformer: bool = True
    smooth_quant: bool = True
    preset: str = "mixed"
    float_ends: bool = False
    float_depthwise: bool = False
    per_channel: bool = True
    calibration: str = "minmax"
    onnx_float_ends: bool = False
    pte_float_elementwise: bool = False


# chosen per family by tools/int8_settings.py (benchmarks/accuracy/int8_settings.md: top-1 drops of models trained
# on drawn textures; the rule is in the tool); MobileViT's three versions are measured and chosen apart
INT8_SETTINGS: dict[str, Int8Settings] = {
    # NNCF transformer type without SmoothQuant: drop 1.25 (with SmoothQuant 32.75, NNCF defaults 4.0); onnxruntime
    # with float ends 1.0 (percentile 0.75, 11 % slower at batch 1). Re-measured with calibration drawn from every
    # class folder (benchmarks/accuracy/int8_settings_levit.md): 0.75 on the textures, -0.19 on the digits; no other
    # NNCF setting tried beats it by more than 1 image (float ends at 300 images 0.5); SmoothQuant at alpha 0.15-0.95
    # costs 5-5.5 (textures) and 27 points (digits)
    "levit": Int8Settings(smooth_quant=False, onnx_float_ends=True),
    # depthwise convolutions float: 0.75 (NNCF defaults 4.25, every other NNCF candidate 4.25-12); onnxruntime 1.0
    "efficientvit_msra": Int8Settings(
        transformer=False, preset="performance", float_depthwise=True, onnx_float_ends=True
    ),
    # depthwise convolutions float: 0.0 (every other NNCF candidate 12-15.75); onnxruntime percentile 0.25
    "mobilevit": Int8Settings(transformer=False, preset="performance", float_depthwise=True, calibration="percentile"),
    # NNCF mixed preset without the transformer type: 0.0 (defaults 1.0); onnxruntime per-tensor 0.0
    "mobilevitv2": Int8Settings(transformer=False, per_channel=False),
    # depthwise convolutions float: -0.5 (every other NNCF candidate 3.25-4.5); onnxruntime with float ends 0.5
    "mobilevitv3": Int8Settings(transformer=False, preset="performance", float_depthwise=True, onnx_float_ends=True),
    # trained 30 epochs (67.75 %): every candidate within 0.25 points of the best, the transformer type's -0.75
    # (agreement with fp32 97.5 %, NNCF defaults 95.2 %). The rule would take NNCF defaults, 5.2 % faster at batch 1
    # (2.50x against 2.37x, within the run's spread); at 224 px with random backbones and linear probes NNCF
    # defaults agreed with fp32 on 46-64 % of images against the transformer type's 61-80 % (T2T-ViT 7/10/12/14, two
    # runs with different random draws: benchmarks/accuracy/int8_agreement*.jsonl), so T2T keeps the transformer type.
    # onnxruntime percentile -1.5. int8 .pte (T2T-ViT-7 trained on digits, 76.25 %, PT2E reference on 539 images):
    # XNNPACK's quantizer as is 1.48 (agreement 90.9 %), adds and multiplies float 0.37 (98.3 %), multiplies alone
    # 1.67 (95.2 %), adds alone 14.84 (68.8 %); blocks, T2T module, head or class-token concat float alone 1.11-2.78
    # (90.7-91.8 %) (tools/pte_int8_settings.py, a one-off search
    # since removed: benchmarks/mobile/pte_int8_settings_t2t.jsonl)
    "t2t_vit": Int8Settings(calibration="percentile", pte_float_elementwise=True),
}
DEFAULT_INT8_SETTINGS = Int8Settings()


def int8_settings_key(model: nn.Module) -> str:
    """The family of a litevit model, with MobileViT split into ``mobilevit``, ``mobilevitv2``, ``mobilevitv3``."""
    name = getattr(model, "variant_name", None)
    return family_line(name) if name in list_models() else getattr(model, "family", "")


def int8_settings_for(model: nn.Module) -> Int8Settings:
    """The measured settings of the model's family (the default settings for models of no registered family)."""
    return INT8_SETTINGS.get(int8_settings_key(model), DEFAULT_INT8_SETTINGS)


_WEIGHTED_OV = {"Convolution", "GroupConvolution", "MatMul"}


def nearest_weighted(
    start: list[Any], step: Callable[[Any], list[Any]], name: Callable[[Any], str], weighted: Callable[[Any], bool]
) -> set[str]:
    """Names of the weighted nodes nearest to ``start`` in a graph: walking by ``step`` (a node's consumers, or its
    producers), every path stops at its first node that is ``weighted``."""
    found, seen, todo = set(), set(), list(start)
    while todo:
        node = todo.pop()
        if name(node) in seen:
            continue
        seen.add(name(node))
        if weighted(node):
            found.add(name(node))
        else:
            todo += step(node)
    return found


def openvino_ends(model: Any) -> list[str]:
    """Names of the first weighted ops on every path from the input and the last on every path to the output."""

    def consumers(node: Any) -> list[Any]:
        return [i.get_node() for out in node.outputs() for i in out.get_target_inputs()]

    def producers(node: Any) -> list[Any]:
        return [i.get_source_output().get_node() for i in node.inputs()]

    def walk(start: list[Any], step: Callable[[Any], list[Any]]) -> set[str]:
        return nearest_weighted(
            start, step, lambda n: n.get_friendly_name(), lambda n: n.get_type_name() in _WEIGHTED_OV
        )

    first = walk([c for p in model.get_parameters() for c in consumers(p)], consumers)
    last = walk([q for r in model.get_results() for q in producers(r)], producers)
    return sorted(first | last)


def onnx_ends(model: Any) -> list[str]:
    """The ONNX counterpart of :func:`openvino_ends` (node names of Conv/MatMul/Gemm)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    users: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def walk(start: list[Any], step: Callable[[Any], list[Any]]) -> set[str]:
        return nearest_weighted(start, step, lambda n: n.name, lambda n: n.op_type in ("Conv", "MatMul", "Gemm"))

    first = walk([n for i in model.graph.input for n in users.get(i.name, [])],
                 lambda n: [u for out in n.output for u in users.get(out, [])])  # fmt: skip
    last = walk([producer[o.name] for o in model.graph.output if o.name in producer],
                lambda n: [producer[i] for i in n.input if i in producer])  # fmt: skip
    return sorted(first | last)


def nncf_options(nncf: Any, settings: Int8Settings) -> dict[str, Any]:
    """``nncf.quantize`` arguments for ``settings`` that both NNCF routes share (OpenVINO graphs and QAT's torch
    graphs): preset, model type and, without SmoothQuant, the advanced parameters that turn it off."""
    advanced = None
    if not settings.smooth_quant:
        from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters

        advanced = nncf.AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    return dict(
        preset=nncf.QuantizationPreset.MIXED if settings.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        model_type=nncf.ModelType.TRANSFORMER if settings.transformer else None,
        advanced_parameters=advanced,
    )


SPEED_ONLY_IMAGES = 16  # synthetic calibration for timing only: an int8 graph runs as fast whatever its ranges


def synthetic_calibration(height: int, width: int, count: int = SPEED_ONLY_IMAGES, parent: Path | None = None) -> Path:
    """A new folder (under ``parent``, default the system's temporary folder) of ``count`` noise images to calibrate
    int8 files that are only timed: their accuracy is meaningless and never reported."""
    import tempfile

    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="litevit-calibration-", dir=parent))
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder
