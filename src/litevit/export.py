"""Export to ONNX, TorchScript and ``torch.export`` (pt2), always from the fused eval model, with parity checks.

Every exported file carries the variant name, the data config and the input size (ONNX ``metadata_props``, the
``litevit.json`` extra file of TorchScript and pt2 archives), so that :class:`ExportedModel` can preprocess images
for it without the Python model. ONNX files are single self-contained files with a dynamic batch axis by default,
at the lowest opset that exports and runs correctly for the model (searched upwards from 9 unless given).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .deploy import fuse
from .features import FeatureExtractor, features_only
from .int8 import (
    DEFAULT_CALIBRATION_IMAGES,
    Recipe,
    agreement,
    calibration_set,
    onnx_int8,
    openvino_ir,
    recipe_for,
    save_openvino,
)
from .layers import to_2tuple
from .loading import create_model, model_info
from .mobile import (
    COREML_PREDICTION_SKIP,
    Delegation,
    coreml_available,
    save_coreml,
    save_pte,
)
from .registry import DataConfig

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "pt2", "openvino", "executorch", "coreml")
SUFFIXES = {".onnx": "onnx", ".ts": "torchscript", ".torchscript": "torchscript", ".pt2": "pt2", ".xml": "openvino"}
SUFFIXES.update({".pte": "executorch", ".mlpackage": "coreml"})  # litevit.mobile
FIXED_BATCH_FORMATS = ("executorch", "coreml")  # "dynamic" exports these at batch 1
INT8_FORMATS = ("onnx", "openvino")
INT8_RTOL = 1.0  # an int8 graph further than this from fp32 (relative to the largest logit) is broken, not rounded
# (a tiny LeViT at 3 classes: 0.52 with its top-1 unchanged; agreement, reported by the check, is the accuracy signal)
INT8_MIN_OPSET = 13  # per-channel QDQ
ONNX_OPSETS = tuple(range(9, 21))  # the opsets the TorchScript-based ONNX exporter can emit, lowest first
RTOL = 1e-4  # parity: max |exported - pytorch| <= RTOL * max |pytorch|
# the opset search rejects broken graphs (a batch size baked in, an op exported with other semantics), not
# float32 rounding, which ill-conditioned weights can amplify well past RTOL
SEARCH_RTOL = 1e-2
_META_KEY = "litevit.json"  # TorchScript / pt2 extra file and ONNX metadata key holding ExportMetadata as JSON
_INPUT, _OUTPUT = "input", "logits"


class ExportError(RuntimeError):
    """An export that failed, or whose output does not match the PyTorch model."""


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


@dataclass(frozen=True)
class ParityCheck:
    """The exported model against the fused PyTorch model on one random batch."""

    batch: int
    max_abs_diff: float
    max_rel_diff: float  # max |exported - pytorch| / max |pytorch|
    passed: bool
    agreement: float | None = None  # int8: share of images whose top-1 class equals the fp32 model's


@dataclass(frozen=True)
class ExportResult:
    path: Path
    metadata: ExportMetadata
    check: ParityCheck | None
    delegation: Delegation | None = None  # ExecuTorch: the share of operators XNNPACK runs


def _format_from(path: Path, format: str | None) -> str:
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
    if isinstance(model, FeatureExtractor):  # its state is a headless classifier's
        rebuilt = create_model(name, img_size=img_size, checkpoint=model.state_dict(), **{**fields, "num_classes": 0})
        resized = features_only(rebuilt, model.out_indices)
    else:
        resized = create_model(name, img_size=img_size, checkpoint=model.state_dict(), **fields)
    resized.model_info = dataclasses.replace(model_info(model), img_size=img_size)
    return resized


def metadata_for(
    model: nn.Module, img_size: tuple[int, int], batch: str | int, format: str, opset: int | None = None
) -> ExportMetadata:
    from . import __version__

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


def _compare(exported: Any, reference: Any, batch: int, rtol: float = RTOL) -> ParityCheck:
    """Parity of one output, or the worst of several (a features model's maps)."""
    if isinstance(reference, (list, tuple)):
        if not isinstance(exported, (list, tuple)) or len(exported) != len(reference):
            raise ExportError(f"exported model does not return the {len(reference)} outputs of the PyTorch model")
        checks = [_compare(e, r, batch, rtol) for e, r in zip(exported, reference, strict=True)]
        return max(checks, key=lambda check: (not check.passed, check.max_rel_diff))
    if exported.shape != reference.shape:
        raise ExportError(f"exported model returns shape {tuple(exported.shape)}, PyTorch {tuple(reference.shape)}")
    diff = (exported.float() - reference.float()).abs().max().item()
    scale = max(reference.abs().max().item(), 1e-12)
    return ParityCheck(batch, diff, diff / scale, diff <= rtol * scale)


@contextlib.contextmanager
def _exporter_log_to_debug() -> Iterator[None]:
    """Send what the ONNX exporter's C++ side writes to file descriptor 1 to this module's debug log.

    torch's TorchScript-based exporter switches its C++ graph log on for every export (``setup_onnx_logging``
    tests the function object ``_jit_is_onnx_log_enabled`` instead of calling it), so a failed attempt at a low
    opset would otherwise dump the whole graph on stdout.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            if text:
                log.debug("ONNX exporter log:\n%s", text[:20000])


def _output_names(model: nn.Module) -> list[str]:
    """``logits`` for a classifier; ``features_0``, ``features_1``, ... for a features model."""
    info = getattr(model, "feature_info", None)
    if isinstance(model, FeatureExtractor) or (info is not None and not isinstance(info, list)):
        return [f"features_{i}" for i in range(len(info))]
    return [_OUTPUT]


def _onnx_bytes(model: nn.Module, example: torch.Tensor, batch: str | int, opset: int) -> bytes:
    outputs = _output_names(model)
    dynamic_axes = {name: {0: "batch"} for name in (_INPUT, *outputs)} if batch == "dynamic" else None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # shape checks in forward() become trace-time constants: intended, the graph is exported for one H, W
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        with _exporter_log_to_debug():
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[_INPUT],
                output_names=outputs,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                verbose=False,
            )
    return buffer.getvalue()


def _ort_session(model: bytes | str | os.PathLike, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run_onnx(session: Any, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
    """The output tensor, or the list of them for a graph with several outputs (a features model)."""
    outputs = [torch.from_numpy(y) for y in session.run(None, {session.get_inputs()[0].name: x.numpy()})]
    return outputs[0] if len(outputs) == 1 else outputs


def _onnx_model(
    model: nn.Module,
    example: torch.Tensor,
    batch: str | int,
    opset: int | None,
    check_input: torch.Tensor | None,
    min_opset: int = ONNX_OPSETS[0],
) -> tuple[bytes, int]:
    """Serialized ONNX at ``opset``, or at the lowest opset that exports and (with ``check_input``) runs correctly."""
    opsets = tuple(o for o in ONNX_OPSETS if o >= min_opset) if opset is None else (opset,)
    failures = []
    reference = None
    if check_input is not None and opset is None:
        with torch.inference_mode():
            reference = model(check_input)
    lowest = 0
    for candidate in opsets:
        if candidate < lowest:
            continue
        try:
            data = _onnx_bytes(model, example, batch, candidate)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; each is reported below
            failures.append(f"opset {candidate}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            log.debug("ONNX export at opset %d failed: %s", candidate, exc)
            # "Support for this operator was added in version N": no point trying the opsets below N
            added = re.search(r"added in version (\d+)", str(exc))
            lowest = int(added.group(1)) if added else lowest
            continue
        if reference is not None:
            try:
                result = _compare(_run_onnx(_ort_session(data), check_input), reference, len(check_input), SEARCH_RTOL)
            except Exception as exc:  # noqa: BLE001 - onnxruntime rejects some graphs at load or run time
                failures.append(f"opset {candidate}: onnxruntime: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            if not result.passed:
                failures.append(
                    f"opset {candidate}: output differs (max relative difference {result.max_rel_diff:.2e})"
                )
                continue
        return data, candidate
    raise ExportError("ONNX export failed at every opset tried:\n  " + "\n  ".join(failures))


def _save_onnx(data: bytes, path: Path, metadata: ExportMetadata) -> None:
    import onnx

    proto = onnx.load_from_string(data)
    entries = {
        _META_KEY: metadata.to_json(),
        "litevit.variant": metadata.variant or "",
        "litevit.data_config": json.dumps(dataclasses.asdict(metadata.data)),
    }
    onnx.helper.set_model_props(proto, entries)
    proto.producer_name = "litevit"
    proto.producer_version = metadata.litevit_version
    proto.doc_string = f"{metadata.variant or 'model'} exported by litevit {metadata.litevit_version}"
    onnx.checker.check_model(proto)
    # one self-contained file: the weights stay inside the protobuf
    onnx.save_model(proto, str(path), save_as_external_data=False)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: ExportMetadata) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={_META_KEY: metadata.to_json()})


def _export_pt2(model: nn.Module, example: torch.Tensor, path: Path, metadata: ExportMetadata) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if metadata.batch == "dynamic" else None
    program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
    torch.export.save(program, str(path), extra_files={_META_KEY: metadata.to_json()})


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
    calibration: str | os.PathLike | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    recipe: Recipe | None = None,
) -> ExportResult:
    """Export the fused eval form of ``model`` (a litevit model, or a registered name for random weights).

    ``format``: ``"onnx"``, ``"torchscript"``, ``"pt2"`` or ``"openvino"`` (default: from the suffix of ``path``:
    ``.onnx``, ``.ts``, ``.pt2``, ``.xml``). ``batch``: ``"dynamic"`` or a fixed size. ``img_size``: the input size
    (default: the model's; another size rebuilds the model and resamples its resolution-dependent weights).
    ``opset``: ONNX opset (default: the lowest that works). ``check``: run the saved file on a batch size different
    from the exported one and raise :class:`ExportError` if it differs from PyTorch by more than ``RTOL`` relative.

    ``int8``: static post-training int8 (:mod:`litevit.int8`), ONNX QDQ for onnxruntime or OpenVINO IR via NNCF,
    calibrated on up to ``calibration_images`` images from the folder ``calibration``, preprocessed with the
    model's data config, by ``recipe`` (default: the family's, :data:`litevit.int8.RECIPES`). Its ``check``
    compares with fp32 PyTorch on the calibration images: the top-1 agreement is reported, and a relative difference
    above ``INT8_RTOL`` (a broken graph) raises :class:`ExportError`.

    The model may be passed as :func:`litevit.create_model` returns it or already fused: fusing is idempotent.
    """
    path = Path(path)
    if int8 and format is None and not path.suffix:
        # the int8 route measured faster for every family (benchmarks/int8_recipes.md, make bench): OpenVINO + NNCF
        path = path.with_suffix(".xml")
    format = _format_from(path, format)
    batch = _parse_batch(batch)
    if format in FIXED_BATCH_FORMATS and batch == "dynamic":
        batch = 1
    if opset is not None and format != "onnx":
        raise ValueError(f"opset applies to ONNX export only, not {format}")
    if int8 and format not in INT8_FORMATS:
        raise ValueError(f"int8 export writes .onnx (onnxruntime QDQ) or .xml (OpenVINO), not {format}")
    if int8 and calibration is None:
        raise ValueError("int8 export needs calibration images: --calibration DIR (a folder of images)")
    if int8 and opset is not None and opset < INT8_MIN_OPSET:
        raise ValueError(f"int8 ONNX (per-channel QDQ) needs opset >= {INT8_MIN_OPSET}, got {opset}")
    if isinstance(model, str):
        model = create_model(model)
    config = getattr(model, "config", None)
    model_size = getattr(config, "img_size", None)
    size = to_2tuple(img_size if img_size is not None else model_size if model_size is not None else 224)
    if model_size is not None and size != to_2tuple(model_size):
        model = _resized(model, size)
    in_chans = int(getattr(config, "in_chans", 3))
    deployed = fuse(model).float()
    for parameter in deployed.parameters():
        parameter.requires_grad_(False)
    example = _example(batch, size, in_chans, seed=0)
    check_input = _example(_check_batch(batch), size, in_chans, seed=1)
    calibration_batches = None
    if int8:
        data = model_info(model).data if hasattr(model, "variant_name") else DataConfig()
        calibration_batches = calibration_set(calibration, data, size, calibration_images)
        check_input = torch.from_numpy(np.concatenate(calibration_batches[:32]))
        if batch != "dynamic":
            check_input = check_input[: int(batch)]

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
        data_bytes, used_opset = _onnx_model(deployed, example, batch, opset, search_input, min_opset)
        if calibration_batches is not None:
            data_bytes = onnx_int8(data_bytes, calibration_batches, _INPUT, recipe or recipe_for(model))
    metadata = dataclasses.replace(
        metadata_for(model, size, batch, format, used_opset), precision="int8" if int8 else "fp32"
    )
    report = None
    if format == "onnx":
        _save_onnx(data_bytes, path, metadata)
    elif format == "executorch":
        report = save_pte(deployed, example, path, metadata.to_json())
        log.info("%s: %s", path, report.summary())
    elif format == "coreml":
        save_coreml(deployed, example, path, metadata.to_json())
    elif format == "openvino":
        ir = openvino_ir(
            deployed, example, batch == "dynamic", metadata.to_json(), calibration_batches, recipe or recipe_for(model)
        )
        save_openvino(ir, path)
    else:
        exporter = _export_torchscript if format == "torchscript" else _export_pt2
        exporter(deployed, example, path, metadata)
    log.info("exported %s to %s (%s, %s)", metadata.variant or type(model).__name__, path, format, metadata.precision)

    parity = None
    if check and format == "coreml" and not coreml_available():
        log.warning("%s: converted; prediction check skipped: %s", path, COREML_PREDICTION_SKIP)
        check = False
    if check:
        with torch.inference_mode():
            reference = deployed(check_input)
        from .exported import ExportedModel  # the loading side imports this module

        exported = ExportedModel(path)
        output = exported(check_input)
        if int8:
            parity = _compare(output, reference, check_input.shape[0], rtol=INT8_RTOL)
            parity = dataclasses.replace(parity, agreement=agreement(output, reference))
        else:
            parity = _compare(output, reference, check_input.shape[0])
        if not parity.passed:
            raise ExportError(
                f"{path}: exported model differs from PyTorch at batch {parity.batch}: max |diff| "
                f"{parity.max_abs_diff:.3e}, relative {parity.max_rel_diff:.3e} > {INT8_RTOL if int8 else RTOL:g}"
            )
    return ExportResult(path, metadata, parity, report)


def quantize(
    model: nn.Module | str,
    path: str | os.PathLike,
    calibration: str | os.PathLike,
    *,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    recipe: Recipe | None = None,
    batch: str | int = "dynamic",
    img_size: int | tuple[int, int] | None = None,
    check: bool = True,
) -> ExportResult:
    """Static post-training int8 of ``model`` into ``path``: ``.xml`` (OpenVINO, NNCF) or ``.onnx`` (onnxruntime QDQ).

    The same as ``export(model, path, int8=True, calibration=...)``; ``path`` without a suffix gets ``.xml``, the
    faster int8 route for every family measured (README). ``check`` (default on) reports the top-1 agreement with
    fp32 PyTorch on the calibration images in ``result.check.agreement``.
    """
    return export(
        model, path, batch=batch, img_size=img_size, check=check, int8=True, calibration=calibration,
        calibration_images=calibration_images, recipe=recipe,
    )  # fmt: skip
