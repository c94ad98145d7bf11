"""Exported files loaded for inference: every format :func:`litevit.deploy.export.export` writes, with its metadata."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .coreml import coreml_runner
from .executorch import pte_runner
from .metadata import FIXED_BATCH_FORMATS, META_KEY, ExportMetadata, format_from
from .onnx import ort_session, run_onnx
from .openvino import openvino_runner


class ExportedModel:
    """An exported file (``.onnx``, ``.ts``/``.torchscript``, ``.pt2``, OpenVINO ``.xml``) loaded for inference."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():  # a .mlpackage is a folder
            raise FileNotFoundError(f"exported model not found: {self.path}")
        self.format = format_from(self.path, None)
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
            session = ort_session(self.path, threads)
            props = session.get_modelmeta().custom_metadata_map
            if META_KEY not in props:
                raise ValueError(f"{self.path} was not exported by litevit (no {META_KEY!r} metadata)")
            self.metadata = ExportMetadata.from_json(props[META_KEY])
            self._run = lambda x: run_onnx(session, x)
            return
        extra = {META_KEY: ""}
        if self.format == "torchscript":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)
                module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
        else:
            module = torch.export.load(str(self.path), extra_files=extra).module()
        if not extra[META_KEY]:
            raise ValueError(f"{self.path} was not exported by litevit (no {META_KEY!r} extra file)")
        meta = extra[META_KEY]
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
