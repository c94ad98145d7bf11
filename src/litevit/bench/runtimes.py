"""The exported-file runtimes of ``litevit bench``: timm's own routes and litevit's ``.pte``, each built once a run.

litevit's onnxruntime and OpenVINO files are ``export --fastest``'s candidates, built and raced by :mod:`.pick`.
timm's models take the routes a timm user would: a plain ``torch.onnx.export`` / ``openvino.convert_model`` of the
unmodified model, and for int8 the quantizers' own defaults (onnxruntime ``quantize_static``, NNCF ``quantize``);
timm has no ExecuTorch route of its own, so ``executorch`` is timed for litevit only.
Both sides run with the same session settings: the given thread count, one stream.

OpenVINO routes are timed at several inference precisions (:func:`precisions`): ``defaults``, what
``compile_model`` gives a user who passes no hint (bf16 on a CPU with native bf16), and pinned ``f32`` and ``bf16``
(the latter only where the CPU computes bf16 natively); and at their defaults also reshaped to the static input
shape (``defaults-static``), as litevit's files are written. Every record names the precision
that ran (:func:`precision_label`), a default one with what OpenVINO chose.

Exporting and quantizing cost far more than timing, so a run builds each file once, with a dynamic batch, and
every group (batch size, thread count) opens its own session on it. ``.pte`` files have a fixed batch.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._extras import has_native_bf16
from ..deploy.int8 import SPEED_ONLY_IMAGES, synthetic_calibration
from ..registry import DataConfig

EXPORT_RUNTIMES = ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8", "executorch")  # CPU, exported files
# timm's ONNX files: opset 17, the first with LayerNormalization as one op (litevit's take --fastest's opsets)
ONNX_OPSET = 17
_NEEDS = {  # runtime -> the modules it imports
    "onnxruntime": ("onnx", "onnxruntime"),
    "onnxruntime-int8": ("onnx", "onnxruntime"),
    "openvino": ("openvino",),
    "openvino-int8": ("openvino", "nncf"),
    "executorch": ("executorch",),
}


SCOPES = ("full", "fastest")
DEFAULTS = "defaults"  # OpenVINO compiled without an inference-precision hint
STATIC = "defaults-static"  # the same, the IR reshaped to the static input shape first (timm's IRs are dynamic)


def precisions(runtime: str, scope: str = "full", flags: frozenset[str] | None = None) -> list[str]:
    """The precisions ``runtime`` is timed at: fp32 or int8 outside OpenVINO; an OpenVINO IR at its ``defaults``, as
    a plain ``convert_model`` gives it (dynamic) and reshaped to the static input shape (the faster of the two is
    the peer), and in the full sweep also pinned to ``f32`` and (on a CPU with native bf16, ``flags``: its feature
    flags) ``bf16``. ``scope="fastest"`` keeps what a plain user runs: the defaults, and no onnxruntime int8
    (``quantize_static``'s defaults; the int8 route at defaults is NNCF's). litevit's onnxruntime and OpenVINO files
    are ``export --fastest``'s candidates instead (:mod:`.pick`).
    """
    if scope not in SCOPES:
        raise ValueError(f"bench scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if runtime == "onnxruntime-int8" and scope == "fastest":
        return []
    if not runtime.startswith("openvino"):
        return ["int8" if runtime.endswith("-int8") else "fp32"]
    defaults = [DEFAULTS, STATIC]
    if scope == "fastest":
        return defaults
    return [*defaults, "f32", *(["bf16"] if has_native_bf16(flags) else [])]


def openvino_default_precision() -> str:
    """The inference precision OpenVINO's CPU plugin picks here when a caller passes none (``bf16`` or ``f32``)."""
    from .._extras import require

    ov = require("openvino", "the OpenVINO bench runtime")
    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()


def precision_label(runtime: str, precision: str) -> str:
    """What a record says ran: ``f32``, ``bf16``, ``defaults (bf16)``, ``int8 + f32`` (an int8 IR's float parts),
    ``int8``, ``fp32``."""
    if not runtime.startswith("openvino"):
        return precision
    label = f"{precision} ({openvino_default_precision()})" if precision in (DEFAULTS, STATIC) else precision
    return f"int8 + {label}" if runtime.endswith("-int8") else label


def installed_runtimes() -> list[str]:
    """``eager`` and every exported-file runtime whose packages are installed here."""
    found = [r for r, modules in _NEEDS.items() if all(importlib.util.find_spec(m) for m in modules)]
    return ["eager", *found]


class ExportedFiles:
    """The exported files of one bench run, keyed by source, model, runtime, input size (and batch for ``.pte``)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or Path(tempfile.mkdtemp(prefix="litevit-bench-"))
        self.files: dict[tuple, Path] = {}
        self.delegations: dict[str, str] = {}  # .pte name -> the share XNNPACK runs and what is left

    def runner(
        self,
        model: nn.Module,
        runtime: str,
        x: torch.Tensor,
        threads: int,
        name: str,
        source: str,
        precision: str | None = None,
    ) -> Callable[[], Any]:
        """A callable running ``x`` through the model's ``runtime`` file (built on first use) with ``threads``;
        OpenVINO files at ``precision`` (:func:`precisions`; None: f32)."""
        key = self.build(model, runtime, x, name, source)
        return self._session(self.files[key], runtime, threads, x, source, precision)

    def build(self, model: nn.Module, runtime: str, x: torch.Tensor, name: str, source: str) -> tuple:
        """Export the model's ``runtime`` file unless this run has it; its key in :attr:`files`."""
        size = tuple(x.shape[-2:])
        batch = x.shape[0] if runtime == "executorch" else None
        key = (source, name, runtime, size, batch)
        if key not in self.files:
            stem = self.folder / (f"{source}-{name}-{runtime}-{size[0]}x{size[1]}" + (f"-b{batch}" if batch else ""))
            build = self._litevit if source == "litevit" else self._timm
            self.files[key] = build(model, runtime, x, stem, name)
        return key

    def _litevit(self, model: nn.Module, runtime: str, x: torch.Tensor, stem: Path, name: str) -> Path:
        from ..deploy.exporting import export

        if runtime != "executorch":  # litevit's onnxruntime and OpenVINO files are --fastest's candidates (.pick)
            raise ValueError(f"the bench builds litevit's {runtime} files as export --fastest's candidates")
        result = export(model, stem.with_suffix(".pte"), batch=x.shape[0], img_size=tuple(x.shape[-2:]))
        self.delegations[result.path.name] = result.delegation.summary()
        return result.path

    def _timm(self, model: nn.Module, runtime: str, x: torch.Tensor, stem: Path, name: str) -> Path:
        from .._extras import require
        from ..deploy.int8 import calibration_set

        example = x.float().cpu()
        batches = None
        if runtime.endswith("-int8"):
            size = tuple(x.shape[-2:])
            batches = calibration_set(
                synthetic_calibration(*size, parent=self.folder), DataConfig(), size, SPEED_ONLY_IMAGES
            )
        if runtime.startswith("openvino"):
            ov = require("openvino", "the OpenVINO bench runtime")
            # NNCF quantizes the plain conversion: read back when it was built already (converting costs seconds)
            converted = self.files.get(("timm", name, "openvino", tuple(x.shape[-2:]), None))
            if converted is not None:
                ir = ov.Core().read_model(str(converted))
            else:
                ir = ov.convert_model(model.float().cpu(), example_input=example)
            if batches is not None:
                nncf = require("nncf", "the openvino-int8 bench runtime")
                ir = nncf.quantize(ir, nncf.Dataset(batches), subset_size=len(batches))
            ov.save_model(ir, str(stem.with_suffix(".xml")), compress_to_fp16=False)
            return stem.with_suffix(".xml")
        require("onnxruntime", "the onnxruntime bench runtime")
        path = stem.with_suffix(".onnx")
        torch.onnx.export(
            model, (example,), str(path), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET, dynamo=False,
        )  # fmt: skip
        if batches is None:
            return path
        from onnxruntime.quantization import quantize_static

        from ..deploy.onnx import calibration_reader

        quantized = stem.parent / f"{stem.name}-int8.onnx"
        quantize_static(str(path), str(quantized), calibration_reader(batches, "input"))  # onnxruntime's defaults
        return quantized

    @staticmethod
    def _session(
        path: Path, runtime: str, threads: int, x: torch.Tensor, source: str, precision: str | None
    ) -> Callable[[], Any]:
        feed = x.float().cpu().contiguous()
        openvino_precision = (precision or "f32") if runtime.startswith("openvino") else None
        if source == "litevit":
            from ..deploy.runtime import ExportedModel

            exported = ExportedModel(path, threads=threads, inference_precision=openvino_precision)
            return lambda: exported(feed)
        if runtime.startswith("openvino"):
            from .._extras import require
            from ..deploy.openvino import openvino_config

            ov = require("openvino", "the OpenVINO bench runtime")
            hint = None if openvino_precision in (DEFAULTS, STATIC) else openvino_precision
            core = ov.Core()
            ir = core.read_model(str(path))
            if openvino_precision == STATIC:
                ir.reshape(list(feed.shape))
            request = core.compile_model(ir, "CPU", openvino_config(threads, hint)).create_infer_request()
            array = feed.numpy()
            return lambda: request.infer({0: array})
        from ..deploy.onnx import ort_session

        session = ort_session(path, threads)
        inputs = {session.get_inputs()[0].name: feed.numpy()}
        return lambda: session.run(None, inputs)
