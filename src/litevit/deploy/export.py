"""Export to ONNX, TorchScript and ``torch.export`` (pt2), always from the fused eval model, with parity checks.

Every exported file carries the variant name, the data config and the input size (ONNX ``metadata_props``, the
``litevit.json`` extra file of TorchScript and pt2 archives), so that :class:`ExportedModel` can preprocess images
for it without the Python model. ONNX files are single self-contained files with a dynamic batch axis by default,
at the lowest opset that exports and runs correctly for the model (searched upwards from 9 unless given).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..layers import to_2tuple
from ..models.features import FeatureExtractor
from ..registry import DataConfig
from ..weights.loading import create_model, model_info
from .coreml import COREML_PREDICTION_SKIP, coreml_available, save_coreml
from .errors import ExportError
from .executorch import Delegation, reference_check, save_pte, save_pte_int8
from .fastest import DEFAULT_MAX_DROP, FastestReport, find_fastest, held_out_check, plan
from .fuse import fuse
from .int8 import (
    DEFAULT_CALIBRATION_IMAGES,
    INT8_CHECK_IMAGES,
    MIN_CALIBRATION_IMAGES,
    Int8Settings,
    calibration_files,
    int8_settings_for,
    load_calibration,
)
from .metadata import FIXED_BATCH_FORMATS, META_KEY, ExportMetadata, format_from
from .onnx import INPUT_NAME, ONNX_OPSETS, onnx_int8, onnx_model, reduce_range_here, save_onnx
from .openvino import openvino_ir, save_openvino
from .parity import INT8_MIN_SIGNAL, ParityCheck, compare, int8_check
from .precision import float_precision, is_int8
from .runtime import ExportedModel

log = logging.getLogger(__name__)

INT8_FORMATS = ("onnx", "openvino", "executorch")
INT8_MIN_OPSET = 13  # per-channel QDQ


@dataclass(frozen=True)
class ExportResult:
    path: Path
    metadata: ExportMetadata
    check: ParityCheck | None
    delegation: Delegation | None = None  # ExecuTorch: the share of operators XNNPACK runs
    reference_check: ParityCheck | None = None  # int8 .pte: against its PT2E module (.executorch.reference_check)
    fastest: FastestReport | None = None  # export(fastest=True): every candidate tried, timed, and the pick
    check_name: str | None = None  # which check ``check`` is (export(fastest=True, check=True))


def _parse_batch(batch: str | int) -> str | int:
    if batch == "dynamic":
        return batch
    try:
        value = int(batch)
    except (TypeError, ValueError):
        raise ValueError(f"batch must be 'dynamic' or a positive integer, got {batch!r}") from None
    if value < 1:
        raise ValueError(f"batch must be 'dynamic' or a positive integer, got {batch!r}")
    return value


def _resized(model: nn.Module, img_size: tuple[int, int]) -> nn.Module:
    """``model`` rebuilt for another input size, its weights resampled by the model's ``adapt_checkpoint``."""
    name = getattr(model, "variant_name", None)
    config = getattr(model, "config", None)
    if name is None or config is None:
        raise ValueError(
            "img_size differs from the model's and the model was not built by litevit.create_model; "
            "build it at the wanted size instead"
        )
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "img_size"}
    if isinstance(model, FeatureExtractor):  # a pruned classifier's state: rebuilt as the same features model
        state, indices = model.state_dict(), model.out_indices
        resized = create_model(
            name, img_size=img_size, checkpoint=state, features_only=True, out_indices=indices, **fields
        )
    else:
        resized = create_model(name, img_size=img_size, checkpoint=model.state_dict(), **fields)
    resized.model_info = dataclasses.replace(model_info(model), img_size=img_size)
    return resized


def metadata_for(
    model: nn.Module, img_size: tuple[int, int], batch: str | int, format: str, opset: int | None = None
) -> ExportMetadata:
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


def _example(batch: str | int, img_size: tuple[int, int], in_chans: int, seed: int) -> torch.Tensor:
    """A random batch: 2 images for a dynamic export (sizes 0 and 1 get specialised by tracers), else ``batch``."""
    generator = torch.Generator().manual_seed(seed)
    n = 2 if batch == "dynamic" else int(batch)
    return torch.randn(n, in_chans, *img_size, generator=generator)


def _check_batch(batch: str | int) -> int:
    """A batch size different from the exported one when the batch axis is dynamic (else the fixed size)."""
    return 3 if batch == "dynamic" else int(batch)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: ExportMetadata) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={META_KEY: metadata.to_json()})


def _export_pt2(model: nn.Module, example: torch.Tensor, path: Path, metadata: ExportMetadata) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if metadata.batch == "dynamic" else None
    program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
    torch.export.save(program, str(path), extra_files={META_KEY: metadata.to_json()})


def export(
    model: nn.Module | str,
    path: str | os.PathLike,
    format: str | None = None,
    *,
    batch: str | int = "dynamic",
    img_size: int | tuple[int, int] | None = None,
    opset: int | None = None,
    check: bool = False,
    int8: bool = False,
    calibration: str | os.PathLike | Sequence[Path] | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    int8_settings: Int8Settings | None = None,
    recipe: Int8Settings | None = None,
    precision: str | None = None,
    fastest: bool = False,
    max_drop: float = DEFAULT_MAX_DROP,
    threads: int | None = None,
    dynamic_batch: bool = False,
    seconds: float = 2.0,
    time_cap: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export the fused eval form of ``model`` (a litevit model, or a registered name for random weights).

    ``format``: ``"onnx"``, ``"torchscript"``, ``"pt2"`` or ``"openvino"`` (default: from the suffix of ``path``:
    ``.onnx``, ``.ts``, ``.pt2``, ``.xml``). ``batch``: ``"dynamic"`` or a fixed size. ``img_size``: the input size
    (default: the model's; another size rebuilds the model and resamples its resolution-dependent weights).
    ``opset``: ONNX opset (default: the lowest that works). ``check``: run the saved file on a batch size different
    from the exported one and raise :class:`ExportError` if it differs from PyTorch by more than ``RTOL`` relative.

    ``int8``: static post-training int8 (:mod:`litevit.deploy.int8`), ONNX QDQ for onnxruntime or OpenVINO IR via NNCF,
    calibrated on up to ``calibration_images`` images from the folder ``calibration``, preprocessed with the
    model's data config, by ``int8_settings`` (default: the family's, :data:`.int8.INT8_SETTINGS`; ``recipe`` is its
    deprecated former name), drawn alike from its sub-folders. Its ``check`` holds up to 32 images of the folder
    out of calibration (at least 8) and runs the int8 file on them against fp32 PyTorch (:func:`.parity.int8_check`):
    it raises :class:`ExportError` on a non-finite output, an output that does not change with the image, and, where
    fp32's logits vary across the images by at least 5 % of their size, on top-1 agreement below 50 % or a
    correlation of the logits with fp32's below 0.5. An int8 ``.pte`` is quantized through PT2E with ExecuTorch's
    XNNPACK quantizer (:func:`.executorch.quantize_int8`); its ``check`` also compares the file with the PT2E module it
    was lowered from (:func:`.executorch.reference_check`, ``result.reference_check``).

    ``precision``: ``"fp32"``, ``"bf16"``, ``"int8"`` or ``"int8-bf16"`` (:mod:`.precision`; ``"int8"`` is the same
    as ``int8=True``); bf16 and int8-bf16 files are OpenVINO IRs whose float parts run in bf16. OpenVINO files record
    the inference precision their float parts run with (``metadata.inference_precision``), which litevit's runner
    compiles them with.

    ``fastest``: build every candidate route that the options allow and this machine runs (:func:`.fastest.plan`:
    the suffix of ``path``, ``format`` and ``precision`` restrict them), measure each on images of ``calibration``
    held out of calibration (:mod:`.accuracy`; without images only files exact to fp32 are eligible), time them
    here at ``batch`` (1 for ``"dynamic"``) on ``threads`` threads (default 1), interleaved, ``seconds`` per pass
    until the fastest eligible file is separated from the next at 95 % or ``time_cap`` is spent, and write the
    pick as ``path`` (its suffix added when ``path`` has none) at the static batch it was timed at
    (``dynamic_batch``: a dynamic batch axis), with how it was chosen in its metadata (``metadata.selection``).
    ``max_drop``: the largest top-1 drop accepted, points, at 95 % confidence. ``check``: the written file is checked
    again on the same images (``result.check_name`` says which check). ``result.fastest`` holds what was tried;
    ``progress`` gets a line per step.

    The model may be passed as :func:`litevit.create_model` returns it or already fused: fusing is idempotent.
    """
    if not fastest and (threads is not None or dynamic_batch):
        raise ValueError("threads and dynamic_batch apply to --fastest (another export takes --batch dynamic)")
    if precision is not None:
        if is_int8(precision):
            int8 = True
        elif int8:
            raise ValueError(f"int8=True contradicts precision={precision!r}")
    float_part = float_precision(precision or ("int8" if int8 else "fp32"))
    if recipe is not None:
        warnings.warn("export(recipe=...) is now export(int8_settings=...)", DeprecationWarning, stacklevel=2)
        int8_settings = int8_settings or recipe
    path = Path(path)
    if fastest:
        options = dict(
            format=format, opset=opset, check=check, calibration=calibration, calibration_images=calibration_images,
            int8_settings=int8_settings, max_drop=max_drop, threads=threads, dynamic_batch=dynamic_batch,
            seconds=seconds, time_cap=time_cap, progress=progress,
        )  # fmt: skip
        return _export_fastest(
            model, path, batch, img_size, "int8" if int8 and precision is None else precision, options
        )
    if int8 and format is None and not path.suffix:
        # the int8 route measured faster for every family (benchmarks/accuracy/int8_settings.md, make bench):
        # OpenVINO + NNCF
        path = path.with_suffix(".xml")
    format = format_from(path, format)
    if float_part == "bf16" and format != "openvino":
        raise ValueError(f"precision {precision!r} runs in OpenVINO only: write .xml, not {format}")
    batch = _parse_batch(batch)
    if format in FIXED_BATCH_FORMATS and batch == "dynamic":
        batch = 1
    if opset is not None and format != "onnx":
        raise ValueError(f"opset applies to ONNX export only, not {format}")
    if int8 and format not in INT8_FORMATS:
        raise ValueError(
            f"int8 export writes .onnx (onnxruntime QDQ), .pte (ExecuTorch XNNPACK) or .xml (OpenVINO), not {format}"
        )
    if int8 and calibration is None:
        raise ValueError("int8 export needs calibration images: --calibration DIR (a folder of images)")
    if int8 and opset is not None and opset < INT8_MIN_OPSET:
        raise ValueError(f"int8 ONNX (per-channel QDQ) needs opset >= {INT8_MIN_OPSET}, got {opset}")
    if isinstance(model, str):
        model = create_model(model)
    settings = int8_settings or int8_settings_for(model)  # what the int8 routes keep float
    config = getattr(model, "config", None)
    model_size = getattr(config, "img_size", None)
    size = to_2tuple(img_size if img_size is not None else model_size if model_size is not None else 224)
    if model_size is not None and size != to_2tuple(model_size):
        model = _resized(model, size)
    in_chans = int(getattr(config, "in_chans", 3))
    fused = fuse(model).float()
    for parameter in fused.parameters():
        parameter.requires_grad_(False)
    example = _example(batch, size, in_chans, seed=0)
    check_input = _example(_check_batch(batch), size, in_chans, seed=1)
    calibration_batches = None
    if int8:
        data = model_info(model).data if hasattr(model, "variant_name") else DataConfig()
        if isinstance(calibration, (str, os.PathLike)):
            files, held_out = calibration_files(calibration, calibration_images, INT8_CHECK_IMAGES if check else 0)
        elif check:
            raise ValueError("the int8 check holds images out of a calibration folder: pass the folder, not files")
        else:  # the files to calibrate on, drawn by the caller (export --fastest)
            files, held_out = list(calibration), []
        calibration_batches = _grouped(load_calibration(files, data, size, files[0].parent), batch)
        if check:  # images the int8 graph was not calibrated on
            check_input = torch.from_numpy(np.concatenate(load_calibration(held_out, data, size, calibration)))

    path.parent.mkdir(parents=True, exist_ok=True)
    used_opset = None
    if format == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            search_input = None
        else:
            search_input = _example(_check_batch(batch), size, in_chans, seed=1)
        min_opset = INT8_MIN_OPSET if int8 else ONNX_OPSETS[0]
        data_bytes, used_opset = onnx_model(fused, example, batch, opset, search_input, min_opset)
        if calibration_batches is not None:
            reduce_range = reduce_range_here()  # this CPU's choice, recorded in the file
            data_bytes = onnx_int8(data_bytes, calibration_batches, INPUT_NAME, settings, reduce_range)
            weight_bits = 7 if reduce_range else 8
    metadata = dataclasses.replace(
        metadata_for(model, size, batch, format, used_opset),
        precision=precision or ("int8" if int8 else "fp32"),
        inference_precision=float_part if format == "openvino" else None,
    )
    if int8 and format == "onnx":
        metadata = dataclasses.replace(metadata, weight_bits=weight_bits)
    report, quantized = None, None
    if format == "onnx":
        save_onnx(data_bytes, path, metadata)
    elif format == "executorch" and calibration_batches is not None:
        batches = [torch.from_numpy(b) for b in calibration_batches]
        report, quantized = save_pte_int8(fused, example, path, metadata.to_json(), batches, settings)
        log.info("%s: %s", path, report.summary())
    elif format == "executorch":
        report = save_pte(fused, example, path, metadata.to_json())
        log.info("%s: %s", path, report.summary())
    elif format == "coreml":
        save_coreml(fused, example, path, metadata.to_json())
    elif format == "openvino":
        ir = openvino_ir(
            fused,
            example,
            batch == "dynamic",
            metadata.to_json(),
            calibration_batches,
            settings,
        )
        save_openvino(ir, path)
    else:
        exporter = _export_torchscript if format == "torchscript" else _export_pt2
        exporter(fused, example, path, metadata)
    log.info("exported %s to %s (%s, %s)", metadata.variant or type(model).__name__, path, format, metadata.precision)

    parity, against_reference = None, None
    if check and format == "coreml" and not coreml_available():
        log.warning("%s: converted; prediction check skipped: %s", path, COREML_PREDICTION_SKIP)
        check = False
    if check:
        with torch.inference_mode():
            reference = fused(check_input)
        exported = ExportedModel(path)
        if int8:
            output = _in_batches(exported, check_input, batch)
            if quantized is not None:  # the .pte against the PT2E module it was lowered from: what XNNPACK must keep
                with torch.no_grad():
                    expected = _in_batches(quantized, check_input, batch)
                against_reference = reference_check(output, expected, reference)
                if not against_reference.passed:
                    raise ExportError(
                        f"{path}: the .pte differs from its PT2E int8 reference on {against_reference.batch} images "
                        f"by more than quantization changed the reference: {against_reference.failures[0]}"
                    )
                ratio = against_reference.max_rel_diff
                log.info("%s: off its PT2E int8 reference by %.3g of the quantization error", path, ratio)
            parity = int8_check(output, reference)
            if not parity.passed:
                raise ExportError(
                    f"{path}: the int8 graph does not compute the model on {parity.batch} images held out of "
                    f"calibration: {'; '.join(parity.failures)}"
                )
            if not parity.judged:
                agreement = "" if parity.agreement is None else f"top-1 agreement {parity.agreement:.1%}, "
                log.warning(
                    "%s: int8 accuracy not judged: fp32's logits vary by only %.2f%% of their size across the %d "
                    "held-out images (< %g%%; untrained weights, or images from outside the model's domain); %s"
                    "correlation %.3f",
                    path, 100 * parity.signal, parity.batch, 100 * INT8_MIN_SIGNAL, agreement, parity.correlation,
                )  # fmt: skip
        else:
            parity = compare(exported(check_input), reference, check_input.shape[0])
            if not parity.passed:
                raise ExportError(
                    f"{path}: exported model differs from PyTorch at batch {parity.batch}: max |diff| "
                    f"{parity.max_abs_diff:.3e}, {parity.failures[0]}"
                )
    return ExportResult(path, metadata, parity, report, reference_check=against_reference)


def _grouped(images: list[np.ndarray], batch: str | int) -> list[np.ndarray]:
    """Calibration inputs for a graph of ``batch``: the ``(1, C, H, W)`` images as they are for a dynamic batch,
    else stacked ``batch`` at a time (the last stack filled up from the first images)."""
    if batch == "dynamic" or int(batch) == 1:
        return images
    rows, size = np.concatenate(images), int(batch)
    return [np.take(rows, range(start, start + size), axis=0, mode="wrap") for start in range(0, len(rows), size)]


def _in_batches(exported: Callable[[torch.Tensor], Any], x: torch.Tensor, batch: str | int) -> Any:
    """``exported`` run on every row of ``x``: at once for a dynamic batch, else in chunks of ``batch`` rows (the
    last one filled up with repeated rows, whose outputs are dropped)."""
    if batch == "dynamic":
        return exported(x)
    n, size = x.shape[0], int(batch)
    outputs = []
    for start in range(0, n, size):
        chunk = x[start : start + size]
        filled = torch.cat([chunk, x[torch.arange(size - len(chunk)) % n]])
        out = exported(filled)
        outputs.append([o[: len(chunk)] for o in out] if isinstance(out, (list, tuple)) else out[: len(chunk)])
    if isinstance(outputs[0], list):
        return [torch.cat(maps) for maps in zip(*outputs, strict=True)]
    return torch.cat(outputs)


def _export_fastest(
    model: nn.Module | str,
    path: Path,
    batch: str | int,
    img_size: int | tuple[int, int] | None,
    precision: str | None,
    options: dict[str, Any],
) -> ExportResult:
    """``export(fastest=True)``: the options validated, then :func:`.fastest.find_fastest` with this exporter."""
    if options["max_drop"] < 0:
        raise ValueError(f"--max-drop must be >= 0 top-1 points, got {options['max_drop']:g}")
    threads = 1 if options["threads"] is None else options["threads"]
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    the_plan = plan(path, options["format"], precision, options["calibration"])
    if options["opset"] is not None and not any(r.format == "onnx" for r in the_plan.routes):
        raise ValueError("--opset applies to ONNX candidates, and these options leave none")
    if options["calibration"] is not None and not isinstance(options["calibration"], (str, os.PathLike)):
        raise ValueError("--fastest splits a calibration folder itself: pass the folder")
    if options["calibration_images"] < MIN_CALIBRATION_IMAGES:
        raise ValueError(
            f"--calibration-images must be at least {MIN_CALIBRATION_IMAGES}, got {options['calibration_images']}"
        )
    batch = _parse_batch(batch)
    if isinstance(model, str):
        model = create_model(model)
    size = getattr(getattr(model, "config", None), "img_size", None)
    if img_size is not None and size is not None and to_2tuple(img_size) != to_2tuple(size):
        model = _resized(model, to_2tuple(img_size))
    build = functools.partial(export, int8_settings=options["int8_settings"])
    target, report, chosen, held_x, reference = find_fastest(
        model, path, build, the_plan, batch=1 if batch == "dynamic" else int(batch),
        dynamic_batch=options["dynamic_batch"], calibration=options["calibration"],
        calibration_images=options["calibration_images"], max_drop=options["max_drop"], threads=threads,
        seconds=options["seconds"], time_cap=options["time_cap"], opset=options["opset"],
        int8_settings=options["int8_settings"], progress=options["progress"],
    )  # fmt: skip
    check, name = None, None
    if options["check"]:
        fused = fuse(model).float().eval()
        images = held_x if held_x is not None else _example(3, _size_of(model), _in_chans(model), seed=1)
        with torch.inference_mode():
            expected = fused(images) if held_x is None else reference
        name, check = held_out_check(target, images, expected, chosen.route)
        if not check.passed:
            raise ExportError(f"{target}: {name} failed on {check.batch} images: {'; '.join(check.failures)}")
    return ExportResult(target, ExportedModel(target).metadata, check, fastest=report, check_name=name)


def _size_of(model: nn.Module) -> tuple[int, int]:
    return to_2tuple(getattr(getattr(model, "config", None), "img_size", None) or 224)


def _in_chans(model: nn.Module) -> int:
    return int(getattr(getattr(model, "config", None), "in_chans", 3))


def quantize(
    model: nn.Module | str,
    path: str | os.PathLike,
    calibration: str | os.PathLike,
    *,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    int8_settings: Int8Settings | None = None,
    batch: str | int = "dynamic",
    img_size: int | tuple[int, int] | None = None,
    check: bool = True,
) -> ExportResult:
    """Static post-training int8 of ``model`` into ``path``: ``.xml`` (OpenVINO, NNCF) or ``.onnx`` (onnxruntime QDQ).

    The same as ``export(model, path, int8=True, calibration=...)``; ``path`` without a suffix gets ``.xml``, the
    faster int8 route for every family measured (README). ``check`` (default on) holds up to 32 of the folder's
    images out of calibration and raises :class:`ExportError` when the int8 file does not compute the model on them
    (:func:`export`); ``result.check`` carries the top-1 agreement and the correlation of the logits with fp32's.
    """
    return export(
        model, path, batch=batch, img_size=img_size, check=check, int8=True, calibration=calibration,
        calibration_images=calibration_images, int8_settings=int8_settings,
    )  # fmt: skip
