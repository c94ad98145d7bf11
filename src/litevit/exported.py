"""Exported files loaded for inference: every format :func:`litevit.export.export` writes, with its metadata."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .deploy import fuse
from .export import _META_KEY, FIXED_BATCH_FORMATS, ExportMetadata, _format_from, _ort_session, _run_onnx
from .int8 import openvino_runner
from .mobile import coreml_runner, pte_runner


class ExportedModel:
    """An exported file (``.onnx``, ``.ts``/``.torchscript``, ``.pt2``, OpenVINO ``.xml``) loaded for inference."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():  # a .mlpackage is a folder
            raise FileNotFoundError(f"exported model not found: {self.path}")
        self.format = _format_from(self.path, None)
        self._run: Callable[[torch.Tensor], torch.Tensor]
        if self.format == "openvino":
            meta_json, self._run = openvino_runner(self.path, threads)
            self.metadata = ExportMetadata.from_json(meta_json)
            return
        if self.format in FIXED_BATCH_FORMATS:
            runner = pte_runner(self.path, threads) if self.format == "executorch" else coreml_runner(self.path)
            meta_json, self._run = runner
            self.metadata = ExportMetadata.from_json(meta_json)
            return
        if self.format == "onnx":
            session = _ort_session(self.path, threads)
            props = session.get_modelmeta().custom_metadata_map
            if _META_KEY not in props:
                raise ValueError(f"{self.path} was not exported by litevit (no {_META_KEY!r} metadata)")
            self.metadata = ExportMetadata.from_json(props[_META_KEY])
            self._run = lambda x: _run_onnx(session, x)
            return
        extra = {_META_KEY: ""}
        if self.format == "torchscript":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)
                module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
        else:
            module = torch.export.load(str(self.path), extra_files=extra).module()
        if not extra[_META_KEY]:
            raise ValueError(f"{self.path} was not exported by litevit (no {_META_KEY!r} extra file)")
        meta = extra[_META_KEY]
        self.metadata = ExportMetadata.from_json(meta.decode() if isinstance(meta, bytes) else meta)
        self._run = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        meta = self.metadata
        if x.ndim != 4 or tuple(x.shape[-2:]) != meta.img_size:
            raise ValueError(f"{self.path.name} expects images of shape (B, C, {meta.img_size[0]}, {meta.img_size[1]})")
        if meta.batch != "dynamic" and x.shape[0] != meta.batch:
            raise ValueError(f"{self.path.name} was exported for batch {meta.batch}; got {x.shape[0]}")
        with torch.inference_mode():
            return self._run(x.float().contiguous())


def compare_onnx_speed(
    model: nn.Module, onnx_path: str | os.PathLike, batch: int = 1, iters: int = 50, warmup: int = 10
) -> dict[str, float]:
    """Median latency (ms) of the fused eager model and of onnxruntime on ``onnx_path``, measured interleaved.

    Both run with ``torch.get_num_threads()`` intra-op threads; each iteration times one eager call and one
    onnxruntime call in alternating order so that machine load affects both alike.
    """
    fused = fuse(model).float()
    threads = torch.get_num_threads()
    exported = ExportedModel(onnx_path, threads=threads)
    x = torch.randn(batch, int(getattr(fused.config, "in_chans", 3)), *exported.metadata.img_size)
    runners = {"eager_ms": lambda: fused(x), "onnxruntime_ms": lambda: exported(x)}
    times: dict[str, list[float]] = {k: [] for k in runners}
    with torch.inference_mode():
        for i in range(warmup + iters):
            order = list(runners) if i % 2 == 0 else list(reversed(runners))
            for key in order:
                start = time.perf_counter()
                runners[key]()
                if i >= warmup:
                    times[key].append((time.perf_counter() - start) * 1e3)
    result = {k: float(np.median(v)) for k, v in times.items()}
    result["speedup"] = result["eager_ms"] / result["onnxruntime_ms"]
    result["threads"] = float(threads)
    return result
