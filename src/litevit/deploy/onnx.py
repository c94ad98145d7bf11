"""ONNX: export through the TorchScript-based exporter at the lowest opset that works, onnxruntime sessions, and
onnxruntime's static QDQ int8."""

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._extras import has_vnni, require
from ..models.features import FeatureExtractor
from .embeddings import EMBEDDING, WithEmbeddings
from .errors import ExportError
from .int8 import DEFAULT_INT8_SETTINGS, Int8Settings, onnx_ends
from .metadata import META_KEY, ExportMetadata
from .parity import compare

log = logging.getLogger(__name__)


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


def reduce_range_here(flags: frozenset[str] | None = None) -> bool:
    """Whether onnxruntime int8 weights exported on a CPU with ``flags`` (default: this one's) take 7 bits: yes
    without VNNI, where onnxruntime's AVX2/AVX-512 kernels add pairs of u8 x s8 products in 16 bits, which 8-bit
    weights can saturate (onnxruntime's advice for such CPUs). Chosen by what the CPU reports, at export time."""
    return not has_vnni(flags)


def weight_bits_mismatch(weight_bits: int | None, flags: frozenset[str] | None = None) -> str | None:
    """Why an onnxruntime int8 file with ``weight_bits`` (its metadata) does not suit a CPU with ``flags`` (default:
    this one's), or None when it does: 8-bit weights, exported on a CPU with VNNI, can saturate on one without."""
    if weight_bits == 8 and reduce_range_here(flags):
        return (
            "its int8 weights take 8 bits (exported on a CPU with VNNI) and this CPU has no VNNI, where onnxruntime's "
            "u8 x s8 pair sums can saturate and the outputs drift: export it again on this CPU (7-bit weights)"
        )
    return None


def onnx_int8(
    fp32: bytes,
    calibration: list[np.ndarray],
    input_name: str,
    settings: Int8Settings = DEFAULT_INT8_SETTINGS,
    reduce_range: bool = False,
) -> bytes:
    """onnxruntime QDQ int8 (U8S8; per-channel weights by default) of an fp32 ONNX model (opset >= 13).

    ``reduce_range``: weights in 7 bits (:func:`reduce_range_here` says whether this CPU needs it); the exporter
    records the choice in the file's metadata.
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
        excluded = onnx_ends(require("onnx", "int8 quantization for onnxruntime").load(str(prepared)))
        quantize_static(
            str(prepared),
            str(out),
            calibration_reader(calibration, input_name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=settings.per_channel,
            op_types_to_quantize=["MatMul", "Conv", "Gemm"],
            nodes_to_exclude=excluded if settings.onnx_float_ends else None,
            calibrate_method=CalibrationMethod.Percentile
            if settings.calibration == "percentile"
            else CalibrationMethod.MinMax,
            reduce_range=reduce_range,
        )
        return out.read_bytes()


ONNX_OPSETS = tuple(range(9, 21))  # the opsets the TorchScript-based ONNX exporter can emit, lowest first


# the opset search rejects broken graphs (a batch size baked in, an op exported with other semantics), not
# float32 rounding, which ill-conditioned weights can amplify well past RTOL
SEARCH_RTOL = 1e-2


INPUT_NAME, OUTPUT_NAME = "input", "logits"


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
    """``logits`` for a classifier (and ``embedding`` for :func:`.embeddings.with_embeddings`'s); ``features_0``,
    ``features_1``, ... for a features model."""
    if isinstance(model, WithEmbeddings):
        return [OUTPUT_NAME, EMBEDDING]
    info = getattr(model, "feature_info", None)
    if isinstance(model, FeatureExtractor) or (info is not None and not isinstance(info, list)):
        return [f"features_{i}" for i in range(len(info))]
    return [OUTPUT_NAME]


def _onnx_bytes(model: nn.Module, example: torch.Tensor, batch: str | int, opset: int) -> bytes:
    outputs = _output_names(model)
    dynamic_axes = {name: {0: "batch"} for name in (INPUT_NAME, *outputs)} if batch == "dynamic" else None
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
                input_names=[INPUT_NAME],
                output_names=outputs,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                verbose=False,
            )
    return buffer.getvalue()


def ort_session(model: bytes | str | os.PathLike, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
    """The output tensor, or the list of them for a graph with several outputs (a features model)."""
    outputs = [torch.from_numpy(y) for y in session.run(None, {session.get_inputs()[0].name: x.numpy()})]
    return outputs[0] if len(outputs) == 1 else outputs


def onnx_model(
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
                result = compare(run_onnx(ort_session(data), check_input), reference, len(check_input), SEARCH_RTOL)
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


def save_onnx(data: bytes, path: Path, metadata: ExportMetadata) -> None:
    import onnx

    proto = onnx.load_from_string(data)
    entries = {
        META_KEY: metadata.to_json(),
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
