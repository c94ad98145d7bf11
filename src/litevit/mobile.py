"""Mobile and edge export: ExecuTorch ``.pte`` with the XNNPACK delegate, and Core ML ``.mlpackage``.

Both start from the fused eval model that :func:`litevit.export.export` hands over, at a fixed batch size.

- ExecuTorch (optional extra ``litevit[executorch]``): ``torch.export`` then ``to_edge_transform_and_lower`` with
  the XNNPACK partitioner. :class:`Delegation` counts the edge operators that ended inside XNNPACK subgraphs and
  those left to ExecuTorch's portable kernels; :mod:`litevit.mobile_rewrite` first replaces the operators XNNPACK
  rejects by equivalent ones it takes. The litevit metadata travels inside the program as a constant
  method returning the JSON bytes, so that a ``.pte`` is one self-contained file.
- Core ML (optional extra ``litevit[coreml]``): coremltools' ML program from the exported program, float32 compute
  precision, every intermediate tensor of rank <= 5 (checked after conversion); the metadata goes into the
  model's user-defined metadata. Core ML predictions run on macOS only.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .int8 import require
from .mobile_rewrite import rewrite_for_xnnpack

_META_METHOD = "litevit_json"  # .pte constant method returning the metadata JSON as uint8
_META_KEY = "litevit.json"  # Core ML user-defined metadata key
MAX_COREML_RANK = 5
COREML_PREDICTION_SKIP = "Core ML predictions run on macOS only (coremltools cannot load a model on this platform)"


@dataclass(frozen=True)
class Delegation:
    """How much of an ExecuTorch program runs in XNNPACK: edge-dialect operators, counted before and after."""

    delegated: int  # operators inside XNNPACK subgraphs
    partitions: int  # XNNPACK subgraphs (each one delegate call at run time)
    remaining: dict[str, int] = field(default_factory=dict)  # operators left to portable kernels, by name
    rewritten: dict[str, int] = field(default_factory=dict)  # ATen nodes litevit.mobile_rewrite replaced, by name

    @property
    def share(self) -> float:
        total = self.delegated + sum(self.remaining.values())
        return self.delegated / total if total else 1.0

    def summary(self) -> str:
        rest = ", ".join(f"{name} x{count}" for name, count in sorted(self.remaining.items())) or "nothing"
        return (
            f"XNNPACK runs {self.share:.1%} of the operators ({self.delegated} in {self.partitions} subgraphs); "
            f"left to portable kernels: {rest}"
        )


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", None) or str(target)
    return name.removeprefix("aten.")


def _counted(node: torch.fx.Node) -> bool:
    # getitem unpacks tuples, it is not a kernel
    return node.op == "call_function" and _op_name(node) not in ("getitem", "executorch_call_delegate")


def delegation(graph_module: torch.fx.GraphModule) -> Delegation:
    """Count operators of a lowered edge program inside and outside its XNNPACK subgraphs."""
    delegated, partitions = 0, 0
    for _, child in graph_module.named_children():
        original = getattr(child, "original_module", None)  # a LoweredBackendModule keeps what it replaced
        if original is not None:
            partitions += 1
            delegated += sum(1 for node in original.graph.nodes if _counted(node))
    remaining = Counter(_op_name(node) for node in graph_module.graph.nodes if _counted(node))
    return Delegation(delegated, partitions, dict(remaining))


def _metadata_method(meta_json: str) -> torch.Tensor:
    return torch.tensor(list(meta_json.encode()), dtype=torch.uint8)


def lower_pte(
    model: nn.Module, example: torch.Tensor, meta_json: str | None = None, rewrite: bool = True
) -> tuple[bytes, Delegation]:
    """The ``.pte`` bytes of ``model`` lowered to XNNPACK at the shape of ``example``, and what was delegated.

    ``rewrite``: first replace what XNNPACK rejects by equivalent operators it takes (:mod:`litevit.mobile_rewrite`).
    """
    exir = require("executorch.exir", "ExecuTorch export")
    xnnpack = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "ExecuTorch export")
    program = torch.export.export(model, (example,))
    rewritten: dict[str, int] = {}
    if rewrite:
        module = program.module()
        rewritten = rewrite_for_xnnpack(module)
        program = torch.export.export(module, (example,))
    constants = {_META_METHOD: _metadata_method(meta_json)} if meta_json is not None else None
    edge = exir.to_edge_transform_and_lower(
        program, partitioner=[xnnpack.XnnpackPartitioner()], constant_methods=constants
    )
    report = dataclasses.replace(delegation(edge.exported_program().graph_module), rewritten=rewritten)
    return edge.to_executorch().buffer, report


def save_pte(model: nn.Module, example: torch.Tensor, path: Path, meta_json: str, rewrite: bool = True) -> Delegation:
    data, report = lower_pte(model, example, meta_json, rewrite)
    path.write_bytes(data)
    return report


def set_threads(threads: int) -> None:
    """Size ExecuTorch's CPU threadpool (process-wide; XNNPACK runs its subgraphs on it)."""
    lib = require("executorch.extension.pybindings.portable_lib", "the ExecuTorch runtime")
    lib._unsafe_reset_threadpool(threads)


def pte_runner(path: str | os.PathLike, threads: int | None = None) -> tuple[str, Callable[[torch.Tensor], Any]]:
    """The metadata JSON of a litevit ``.pte`` and a function running its ``forward`` in ExecuTorch's runtime."""
    runtime = require("executorch.runtime", "running a .pte").Runtime.get()
    if threads is not None:
        set_threads(threads)
    program = runtime.load_program(str(path))
    if _META_METHOD not in program.method_names:
        raise ValueError(f"{path} was not exported by litevit (no {_META_METHOD!r} method)")
    meta = program.load_method(_META_METHOD).execute([])[0]
    forward = program.load_method("forward")

    def run(x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outputs = forward.execute([x])
        return outputs[0] if len(outputs) == 1 else list(outputs)

    return bytes(meta.tolist()).decode(), run


def _ranks(mil_program: Any) -> dict[str, int]:
    """The largest rank each MIL operator type produces, over the whole program."""
    ranks: dict[str, int] = {}
    for function in mil_program.functions.values():
        for op in function.operations:
            for output in op.outputs:
                shape = getattr(output, "shape", None)
                if shape is not None:
                    ranks[op.op_type] = max(ranks.get(op.op_type, 0), len(shape))
    return ranks


def save_coreml(model: nn.Module, example: torch.Tensor, path: Path, meta_json: str) -> dict[str, int]:
    """Convert to a Core ML ML program at float32 and save it; returns the largest rank per operator type.

    coremltools converts the ``torch.export`` program (its TorchScript frontend fails on MobileViT's traced
    shape arithmetic). Raises ``ValueError`` when a tensor has rank above ``MAX_COREML_RANK``.
    """
    ct = require("coremltools", "Core ML export")
    program = torch.export.export(model, (example,)).run_decompositions({})
    converted = ct.convert(
        program,
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS16,
    )
    ranks = _ranks(converted._mil_program)
    too_high = {op: rank for op, rank in ranks.items() if rank > MAX_COREML_RANK}
    if too_high:
        raise ValueError(f"Core ML graph has tensors of rank > {MAX_COREML_RANK}: {too_high}")
    converted.user_defined_metadata[_META_KEY] = meta_json
    converted.save(str(path))
    return ranks


def coreml_available() -> bool:
    """Whether Core ML can run predictions here (macOS with coremltools)."""
    return platform.system() == "Darwin"


def coreml_runner(path: str | os.PathLike) -> tuple[str, Callable[[torch.Tensor], Any]]:
    """The metadata JSON of a litevit ``.mlpackage`` and a function predicting with it (macOS only)."""
    ct = require("coremltools", "running a .mlpackage")
    if not coreml_available():
        raise RuntimeError(COREML_PREDICTION_SKIP)
    mlmodel = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
    meta = mlmodel.user_defined_metadata.get(_META_KEY)
    if meta is None:
        raise ValueError(f"{path} was not exported by litevit (no {_META_KEY!r} metadata)")
    description = mlmodel.get_spec().description
    feed, names = description.input[0].name, [output.name for output in description.output]

    def run(x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        result = mlmodel.predict({feed: x.numpy()})
        outputs = [torch.from_numpy(np.asarray(result[name])) for name in names]
        return outputs[0] if len(outputs) == 1 else outputs

    return meta, run
