"""One exported file: the fused eval form of a model, in one format at one precision, with its metadata inside.

:func:`build_file` is the single-file builder under both :func:`litevit.deploy.exporting.export` and ``--fastest``
(:func:`.fastest.find_fastest`, which builds each candidate with it). It trusts its options: ``export`` validates
them. Every file carries the variant name, the data config and the input size (ONNX ``metadata_props``, the
``litevit.json`` extra file of TorchScript and pt2 archives, the IR's runtime info, a ``.pte`` constant method, Core
ML's user metadata), so that :class:`.runtime.ExportedModel` can preprocess images for it without the Python model.
ONNX files are single self-contained files, at the lowest opset that exports and runs correctly for the model
(searched upwards from 9 unless given).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import _extras
from ..layers import to_2tuple
from ..models.features import FeatureExtractor
from ..registry import DataConfig
from ..weights.loading import model_info
from .coreml import save_coreml
from .embeddings import with_embeddings
from .executorch import Delegation, save_pte, save_pte_int8
from .fuse import fuse
from .int8 import Int8Settings, int8_settings_for, load_calibration
from .metadata import META_KEY, ExportMetadata
from .onnx import INPUT_NAME, ONNX_OPSETS, onnx_int8, onnx_model, reduce_range_here, save_onnx
from .openvino import openvino_ir, save_openvino
from .precision import float_precision, is_int8

log = logging.getLogger(__name__)

INT8_FORMATS = ("onnx", "openvino", "executorch")
INT8_MIN_OPSET = 13  # per-channel QDQ
CHECK_BATCH = 3  # a dynamic-batch file is checked at a batch size it was not traced at


@dataclass(frozen=True)
class Built:
    """A written file and what checking it needs."""

    path: Path
    metadata: ExportMetadata
    fused: nn.Module  # the fused fp32 eval model the file was exported from
    delegation: Delegation | None = None  # ExecuTorch: the share of operators XNNPACK runs
    pte_reference: nn.Module | None = None  # int8 .pte: the PT2E module it was lowered from (pte-reference check)


def image_size(model: nn.Module) -> tuple[int, int]:
    """The input size ``model`` was built for (224 for a model that does not say)."""
    return to_2tuple(getattr(getattr(model, "config", None), "img_size", None) or 224)


def in_chans(model: nn.Module) -> int:
    return int(getattr(getattr(model, "config", None), "in_chans", 3))


def data_config(model: nn.Module) -> DataConfig:
    """The preprocessing of ``model``'s weights (the default one for a model litevit did not build)."""
    return model_info(model).data if hasattr(model, "variant_name") else DataConfig()


def metadata_for(
    model: nn.Module, img_size: tuple[int, int], batch: str | int, format: str, opset: int | None = None
) -> ExportMetadata:
    """The metadata of a fp32 file of ``model`` (its variant, classes and data config, when litevit built it)."""
    from .._version import __version__

    info = model_info(model) if hasattr(model, "variant_name") else None
    name = info.variant if info is not None else None
    data = info.data if info is not None else DataConfig()
    features = isinstance(model, FeatureExtractor)
    num_classes = 0 if features else int(getattr(getattr(model, "config", None), "num_classes", 0))
    names = info.class_names if info is not None and not features else None
    return ExportMetadata(
        name, img_size, num_classes, data, batch, format, opset, __version__, torch.__version__.split("+")[0], names
    )


def example_batch(batch: str | int, img_size: tuple[int, int], in_chans: int, seed: int) -> torch.Tensor:
    """A random batch: 2 images for a dynamic export (sizes 0 and 1 get specialised by tracers), else ``batch``."""
    generator = torch.Generator().manual_seed(seed)
    n = 2 if batch == "dynamic" else int(batch)
    return torch.randn(n, in_chans, *img_size, generator=generator)


def check_batch(batch: str | int) -> int:
    """A batch size different from the exported one when the batch axis is dynamic (else the fixed size)."""
    return CHECK_BATCH if batch == "dynamic" else int(batch)


EMBEDDING_FORMATS = ("onnx", "openvino")  # the formats whose runtimes read a second output


def build_file(
    model: nn.Module,
    path: Path,
    format: str,
    precision: str = "fp32",
    *,
    batch: str | int = "dynamic",
    img_size: tuple[int, int] | None = None,
    opset: int | None = None,
    calibration: Sequence[Path] | None = None,
    int8_settings: Int8Settings | None = None,
    embeddings: bool = False,
) -> Built:
    """Write the fused eval form of ``model`` to ``path``.

    ``format``: one of :data:`.metadata.FORMATS`. ``precision``: :data:`.precision.PRECISIONS` (int8 for
    :data:`INT8_FORMATS`, bf16 float parts for OpenVINO). ``batch``: ``"dynamic"`` or a fixed size. ``opset``: ONNX
    opset (default: the lowest that works). ``img_size``: the input size (default: the one ``model`` was built for;
    :func:`.exporting.export` rebuilds a litevit model for another size first). ``calibration``: the image files an
    int8 file is calibrated on, read with the model's data config. ``int8_settings``: what int8 keeps float
    (default: the family's). ``embeddings``: the graph has a second output, the pre-logits features
    (:func:`.embeddings.with_embeddings`; ONNX and OpenVINO only).
    """
    if embeddings and format not in EMBEDDING_FORMATS:
        raise ValueError(f"embeddings are a second graph output of .onnx and .xml files, not of {format}")
    size, chans = img_size or image_size(model), in_chans(model)
    fused = fuse(model).float()
    if embeddings:
        fused = with_embeddings(fused)
    for parameter in fused.parameters():
        parameter.requires_grad_(False)
    example = example_batch(batch, size, chans, seed=0)
    settings = int8_settings or int8_settings_for(model)  # what the int8 routes keep float
    batches = None
    if is_int8(precision):
        files = list(calibration or ())
        batches = _grouped(load_calibration(files, data_config(model), size, files[0].parent), batch)
    metadata = dataclasses.replace(
        metadata_for(model, size, batch, format),
        precision=precision,
        inference_precision=float_precision(precision) if format == "openvino" else None,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    delegation, pte_reference = None, None
    if format == "onnx":
        runs = _extras.available("onnxruntime")  # the opset search runs each graph when it can
        search_input = example_batch(check_batch(batch), size, chans, seed=1) if runs else None
        metadata = _write_onnx(fused, example, path, metadata, opset, search_input, batches, settings)
    elif format == "executorch" and batches is not None:
        tensors = [torch.from_numpy(b) for b in batches]
        delegation, pte_reference = save_pte_int8(fused, example, path, metadata.to_json(), tensors, settings)
    elif format == "executorch":
        delegation = save_pte(fused, example, path, metadata.to_json())
    elif format == "coreml":
        save_coreml(fused, example, path, metadata.to_json())
    elif format == "openvino":
        save_openvino(openvino_ir(fused, example, batch == "dynamic", metadata.to_json(), batches, settings), path)
    elif format == "torchscript":
        _write_torchscript(fused, example, path, metadata)
    else:
        _write_pt2(fused, example, path, metadata)
    if delegation is not None:
        log.info("%s: %s", path, delegation.summary())
    log.info("exported %s to %s (%s, %s)", metadata.variant or type(model).__name__, path, format, precision)
    return Built(path, metadata, fused, delegation, pte_reference)


def _write_onnx(
    fused: nn.Module,
    example: torch.Tensor,
    path: Path,
    metadata: ExportMetadata,
    opset: int | None,
    search_input: torch.Tensor | None,
    batches: list[np.ndarray] | None,
    settings: Int8Settings,
) -> ExportMetadata:
    """The ONNX file (int8 QDQ when calibration ``batches`` are given); its metadata with the opset it took."""
    min_opset = INT8_MIN_OPSET if batches is not None else ONNX_OPSETS[0]
    data, used_opset = onnx_model(fused, example, metadata.batch, opset, search_input, min_opset)
    metadata = dataclasses.replace(metadata, opset=used_opset)
    if batches is not None:
        reduce_range = reduce_range_here()  # this CPU's choice, recorded in the file
        data = onnx_int8(data, batches, INPUT_NAME, settings, reduce_range)
        metadata = dataclasses.replace(metadata, weight_bits=7 if reduce_range else 8)
    save_onnx(data, path, metadata)
    return metadata


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: ExportMetadata) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={META_KEY: metadata.to_json()})


def _write_pt2(model: nn.Module, example: torch.Tensor, path: Path, metadata: ExportMetadata) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if metadata.batch == "dynamic" else None
    program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
    torch.export.save(program, str(path), extra_files={META_KEY: metadata.to_json()})


def _grouped(images: list[np.ndarray], batch: str | int) -> list[np.ndarray]:
    """Calibration inputs for a graph of ``batch``: the ``(1, C, H, W)`` images as they are for a dynamic batch,
    else stacked ``batch`` at a time (the last stack filled up from the first images)."""
    if batch == "dynamic" or int(batch) == 1:
        return images
    rows, size = np.concatenate(images), int(batch)
    return [np.take(rows, range(start, start + size), axis=0, mode="wrap") for start in range(0, len(rows), size)]
