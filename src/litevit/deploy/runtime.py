"""Exported files loaded for inference: every format :func:`litevit.deploy.exporting.export` writes, with its metadata.

A file with a second output named ``embedding`` (:mod:`.embeddings`; ONNX and OpenVINO) gives the pre-logits features
beside the logits: :meth:`ExportedModel.embed`.

A file's metadata is read as untrusted input: every field is checked (:meth:`ExportMetadata.from_json`), and against
the graph where the format states its shapes (input size, batch, class count); a file that disagrees with itself is
a :class:`MetadataError` naming the field.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._extras import require
from .coreml import coreml_runner
from .embeddings import EMBEDDING
from .executorch import pte_runner
from .metadata import FIXED_BATCH_FORMATS, META_KEY, ExportMetadata, MetadataError, format_from
from .onnx import ort_session, run_onnx, weight_bits_mismatch
from .openvino import openvino_runner
from .routes import route_of

log = logging.getLogger(__name__)
Shape = tuple[int | None, ...]  # a graph's tensor shape, None for a dynamic dim
Output = torch.Tensor | list[torch.Tensor]  # a graph's output, or its outputs in order


class ExportedModel:
    """An exported file (``.onnx``, ``.ts``/``.torchscript``, ``.pt2``, OpenVINO ``.xml``) loaded for inference."""

    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, inference_precision: str | None = None
    ) -> None:
        """``inference_precision`` (OpenVINO files only): None runs the file at the precision it records; ``"f32"``,
        ``"bf16"`` force one; ``"defaults"`` takes OpenVINO's own defaults (:func:`.openvino.openvino_runner`)."""
        self.path = Path(path)
        if not self.path.exists():  # a .mlpackage is a folder
            raise FileNotFoundError(f"exported model not found: {self.path}")
        self.format = format_from(self.path, None)
        self._run: Callable[[torch.Tensor], Output]
        graph: tuple[Shape, list[Shape]] | None = None  # (input, outputs) as the file states them; None: unstated
        names: list[str] = []  # the graph's output names, where the format keeps them
        if inference_precision is not None and self.format != "openvino":
            raise ValueError(f"inference_precision applies to OpenVINO files only, not {self.format}")
        if self.format == "openvino":
            meta_json, self._run = openvino_runner(self.path, threads, inference_precision)
            graph, names = _openvino_graph(self.path)
        elif self.format in FIXED_BATCH_FORMATS:
            if self.format == "executorch":
                meta_json, self._run, graph = pte_runner(self.path, threads)
            else:
                meta_json, self._run = coreml_runner(self.path)
        elif self.format == "onnx":
            session = ort_session(self.path, threads)
            props = session.get_modelmeta().custom_metadata_map
            if META_KEY not in props:
                raise ValueError(f"{self.path} was not exported by litevit (no {META_KEY!r} metadata)")
            meta_json = props[META_KEY]
            graph = _dims(session.get_inputs()[0].shape), [_dims(o.shape) for o in session.get_outputs()]
            names = [o.name for o in session.get_outputs()]
            self._run = lambda x: run_onnx(session, x)
        else:
            meta_json, self._run, graph = self._load_torch()
        self.has_embedding = names[1:] == [EMBEDDING] and len(names) == 2  # (logits, embedding), as exported
        try:
            self.metadata = ExportMetadata.from_json(meta_json)
            if self.metadata.format != self.format:
                raise MetadataError(
                    f"litevit metadata field 'format' is {self.metadata.format!r} but the file is {self.format}"
                )
            if graph is not None:
                check_graph(self.metadata, *graph, embedding=self.has_embedding)
        except MetadataError as exc:
            raise MetadataError(f"{self.path}: {exc}") from None
        if self.format == "onnx" and (mismatch := weight_bits_mismatch(self.metadata.weight_bits)):
            log.warning("%s: %s", self.path, mismatch)

    def _load_torch(self) -> tuple[str, Callable[[torch.Tensor], torch.Tensor], tuple[Shape, list[Shape]] | None]:
        """A TorchScript or pt2 file's metadata JSON, module and (pt2 only) graph shapes."""
        extra = {META_KEY: ""}
        graph = None
        if self.format == "torchscript":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)
                module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
        else:
            program = torch.export.load(str(self.path), extra_files=extra)
            graph = _program_shapes(program)
            module = program.module()
        if not extra[META_KEY]:
            raise ValueError(f"{self.path} was not exported by litevit (no {META_KEY!r} extra file)")
        meta = extra[META_KEY]
        return meta.decode() if isinstance(meta, bytes) else meta, module, graph

    def describe(self) -> str:
        """One line: the file's route, batch and input, and how ``--fastest`` chose it when it did."""
        meta = self.metadata
        route = route_of(meta.format, meta.precision)
        what = f"route {route.name}" if route is not None else f"{meta.format} {meta.precision}"
        line = f"{self.path.name}: {what}, batch {meta.batch}, input {meta.img_size[0]}x{meta.img_size[1]}"
        s = meta.selection
        if s is not None:
            measured = f"{s.images} held-out images" if s.images else "no images (exact files only)"
            line += (
                f"; chosen by --fastest among {len(s.candidates)} files on {s.cpu}, {s.threads} thread(s), batch "
                f"{s.batch}, drop <= {s.max_drop:g} points at {s.confidence:.0%} on {measured}"
            )
        return line

    def __call__(self, x: torch.Tensor) -> Output:
        """The class logits of a batch (a features model's file: its feature maps)."""
        out = self._outputs(x)
        return out[0] if self.has_embedding else out

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The class logits and the pre-logits features of a batch, from a file with an ``embedding`` output."""
        if not self.has_embedding:
            raise ValueError(
                f"{self.path}: the file has no {EMBEDDING!r} output (export the model with its embeddings: "
                "litevit.deploy.embeddings.with_embeddings), or give the eager model"
            )
        logits, embedding = self._outputs(x)
        return logits, embedding

    def _outputs(self, x: torch.Tensor) -> Output:
        meta = self.metadata
        if x.ndim != 4 or tuple(x.shape[-2:]) != meta.img_size:
            raise ValueError(f"{self.path.name} expects images of shape (B, C, {meta.img_size[0]}, {meta.img_size[1]})")
        if meta.batch != "dynamic" and x.shape[0] != meta.batch:
            return in_fixed_batches(self._outputs, x, meta.batch, self.path.name)
        with torch.inference_mode():
            out = self._run(x.float().contiguous())
        logits = out[0] if self.has_embedding else out
        # formats that state no output shape (TorchScript, Core ML) are checked on their first output
        if meta.num_classes and not (isinstance(logits, torch.Tensor) and logits.shape[-1] == meta.num_classes):
            got = f"{logits.shape[-1]} classes" if isinstance(logits, torch.Tensor) else f"{len(logits)} outputs"
            raise MetadataError(
                f"{self.path}: litevit metadata field 'num_classes' is {meta.num_classes} but the graph gives {got}"
            )
        return out


def in_fixed_batches(run: Callable[[torch.Tensor], Any], x: torch.Tensor, batch: int, name: str) -> Any:
    """``run`` (a graph of a fixed ``batch``, called ``name``) on every row of ``x``: in chunks of ``batch`` rows,
    the last one filled up with repeated rows whose outputs are dropped."""
    n = x.shape[0]
    if n == 0:
        raise ValueError(f"{name}: no images to run (an empty batch)")
    outputs = []
    for start in range(0, n, batch):
        chunk = x[start : start + batch]
        out = run(torch.cat([chunk, x[torch.arange(batch - len(chunk)) % n]]))
        outputs.append([o[: len(chunk)] for o in out] if isinstance(out, (list, tuple)) else out[: len(chunk)])
    if isinstance(outputs[0], list):
        return [torch.cat(maps) for maps in zip(*outputs, strict=True)]
    return torch.cat(outputs)


def check_graph(meta: ExportMetadata, inputs: Shape, outputs: Sequence[Shape], embedding: bool = False) -> None:
    """Raise :class:`MetadataError` naming the metadata field that contradicts the graph's input or output shapes
    (``embedding``: the outputs are the logits and the pre-logits features)."""
    if len(inputs) != 4:
        raise MetadataError(f"the graph's input has shape {list(inputs)}, not B, C, H, W")
    if any(g is not None and g != m for g, m in zip(inputs[2:], meta.img_size, strict=True)):
        raise MetadataError(
            f"litevit metadata field 'img_size' is {list(meta.img_size)} but the graph takes {list(inputs[2:])}"
        )
    if inputs[0] is not None and meta.batch != inputs[0]:
        raise MetadataError(f"litevit metadata field 'batch' is {meta.batch!r} but the graph takes batch {inputs[0]}")
    if embedding and len(outputs[1]) != 2:
        raise MetadataError(f"the graph's {EMBEDDING!r} output has shape {list(outputs[1])}, not B, C")
    if meta.num_classes:
        outputs = outputs[:1] if embedding else outputs
        if len(outputs) != 1:
            raise MetadataError(
                f"litevit metadata field 'num_classes' is {meta.num_classes} but the graph has {len(outputs)} outputs"
            )
        last = outputs[0][-1] if outputs[0] else None
        if last is not None and last != meta.num_classes:
            raise MetadataError(
                f"litevit metadata field 'num_classes' is {meta.num_classes} but the graph gives {last} classes"
            )


def _dims(shape: Sequence[Any]) -> Shape:
    """A shape with named or symbolic dims as None."""
    return tuple(d if isinstance(d, int) else None for d in shape)


def _openvino_graph(path: Path) -> tuple[tuple[Shape, list[Shape]], list[str]]:
    """An IR's input and output shapes, and its output names (one of each output's names; ``""`` for none)."""
    model = require("openvino", f"running {path.name}").Core().read_model(str(path))

    def shape(port: Any) -> Shape:
        partial = port.get_partial_shape()
        return tuple(d.get_length() if d.is_static else None for d in partial) if partial.rank.is_static else ()

    names = [EMBEDDING if EMBEDDING in port.get_names() else next(iter(port.get_names()), "") for port in model.outputs]
    return (shape(model.inputs[0]), [shape(port) for port in model.outputs]), names


def _program_shapes(program: torch.export.ExportedProgram) -> tuple[Shape, list[Shape]]:
    """The user input's and outputs' shapes of a ``torch.export`` program (symbolic dims as None)."""
    nodes = {node.name: node for node in program.graph.nodes}
    first = nodes[program.graph_signature.user_inputs[0]]
    outputs = [nodes[name] for name in program.graph_signature.user_outputs if name in nodes]
    return _dims(first.meta["val"].shape), [_dims(node.meta["val"].shape) for node in outputs]
