"""Mobile and edge export: ExecuTorch ``.pte`` with the XNNPACK delegate, and Core ML ``.mlpackage``.

Both start from the fused eval model that :func:`litevit.deploy.export.export` hands over, at a fixed batch size.

- ExecuTorch (optional extra ``litevit[executorch]``): ``torch.export`` then ``to_edge_transform_and_lower`` with
  the XNNPACK partitioner. :class:`Delegation` counts the edge operators that ended inside XNNPACK subgraphs and
  those left to ExecuTorch's portable kernels; :mod:`.xnnpack_rewrite` first replaces the operators XNNPACK
  rejects by equivalent ones it takes. The litevit metadata travels inside the program as a constant
  method returning the JSON bytes, so that a ``.pte`` is one self-contained file.
- Core ML (optional extra ``litevit[coreml]``): coremltools' ML program from the exported program, float32 compute
  precision, every intermediate tensor of rank <= 5 (checked after conversion); the metadata goes into the
  model's user-defined metadata. Core ML predictions run on macOS only.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._extras import require
from .xnnpack_rewrite import rewrite_for_xnnpack

_META_METHOD = "litevit_json"  # .pte constant method returning the metadata JSON as uint8


@dataclass(frozen=True)
class Delegation:
    """How much of an ExecuTorch program runs in XNNPACK: edge-dialect operators, counted before and after."""

    delegated: int  # operators inside XNNPACK subgraphs
    partitions: int  # XNNPACK subgraphs (each one delegate call at run time)
    remaining: dict[str, int] = field(default_factory=dict)  # operators left to portable kernels, by name
    rewritten: dict[str, int] = field(default_factory=dict)  # ATen nodes xnnpack_rewrite replaced, by name

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

    ``rewrite``: first replace what XNNPACK rejects by equivalent operators it takes (:mod:`.xnnpack_rewrite`).
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


def pte_runner(
    path: str | os.PathLike, threads: int | None = None
) -> tuple[str, Callable[[torch.Tensor], Any], tuple[tuple[int, ...], list[tuple[int, ...]]]]:
    """The metadata JSON of a litevit ``.pte``, a function running its ``forward`` in ExecuTorch's runtime, and the
    shapes of its input and outputs (a ``.pte`` is planned for fixed shapes)."""
    runtime = require("executorch.runtime", "running a .pte").Runtime.get()
    if threads is not None:
        set_threads(threads)
    program = runtime.load_program(str(path))
    if _META_METHOD not in program.method_names:
        raise ValueError(f"{path} was not exported by litevit (no {_META_METHOD!r} method)")
    meta = program.load_method(_META_METHOD).execute([])[0]
    forward = program.load_method("forward")
    plan = forward.metadata
    shapes = (
        tuple(plan.input_tensor_meta(0).sizes()),
        [tuple(plan.output_tensor_meta(i).sizes()) for i in range(plan.num_outputs())],
    )

    def run(x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outputs = forward.execute([x])
        return outputs[0] if len(outputs) == 1 else list(outputs)

    return bytes(meta.tolist()).decode(errors="replace"), run, shapes  # tampered bytes fail as JSON, named
