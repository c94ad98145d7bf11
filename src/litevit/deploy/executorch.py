"""Mobile and edge export: ExecuTorch ``.pte`` with the XNNPACK delegate, and Core ML ``.mlpackage``.

Both start from the fused eval model that :func:`litevit.deploy.builder.build_file` hands over, at a fixed batch size.

- ExecuTorch (optional extra ``litevit[executorch]``): ``torch.export`` then ``to_edge_transform_and_lower`` with
  the XNNPACK partitioner. :class:`Delegation` counts the edge operators that ended inside XNNPACK subgraphs and
  those left to ExecuTorch's portable kernels; :mod:`.xnnpack_rewrite` first replaces the operators XNNPACK
  rejects by equivalent ones it takes. The litevit metadata travels inside the program as a constant
  method returning the JSON bytes, so that a ``.pte`` is one self-contained file.
- ExecuTorch int8 (:func:`quantize_int8`): PT2E static quantization with ExecuTorch's ``XNNPACKQuantizer``
  (symmetric int8 activations, per-channel symmetric int8 weights), calibrated on images preprocessed as for the
  other int8 routes, then lowered as fp32 is. The converted PT2E module is the int8 reference the ``.pte`` is checked
  against (:func:`reference_check`); what the quantizer leaves float is counted in :attr:`Delegation.float_ops`.
- Core ML (optional extra ``litevit[coreml]``): coremltools' ML program from the exported program, float32 compute
  precision, every intermediate tensor of rank <= 5 (checked after conversion); the metadata goes into the
  model's user-defined metadata. Core ML predictions run on macOS only.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._extras import require
from .errors import ExportError
from .int8 import DEFAULT_INT8_SETTINGS, Int8Settings
from .parity import PTE_REFERENCE, CheckResult, flat_outputs
from .xnnpack_rewrite import rewrite_for_xnnpack

# what Int8Settings.pte_float_elementwise leaves float (the quantizer's filter; its cat annotator ignores filters)
_ELEMENTWISE = (torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor)
_META_METHOD = "litevit_json"  # .pte constant method returning the metadata JSON as uint8
# |.pte - PT2E reference| / |PT2E reference - fp32| (Frobenius norms over the checked images), at most. XNNPACK's
# int8 kernels round differently from the reference's float-simulated quantization, and the differences grow with
# depth. Measured on held-out images of digits-trained models: LeViT-128S 0.36, EfficientViT-M0 0.21, T2T-ViT-7 0.38,
# MobileViTv3-XXS 0.70, MobileViTv2-050 0.71 and, in an earlier training run, 1.02
# (benchmarks/mobile/pte_int8*.jsonl, docs/mobile.md). One layer's weight scales planted 1.1x or 1.5x off at the
# first or last weighted layer of MobileViTv2-050 and v3-XXS: 2.6-14 (tools/pte_int8_faults.py,
# benchmarks/mobile/pte_int8_faults.jsonl); in the middle, where the next norm undoes a scale, 0.69-1.10: such a
# fault barely moves the outputs and no output check sees it. The bound sits between the two.
PTE_INT8_MAX_RATIO = 2.0


@dataclass(frozen=True)
class Delegation:
    """How much of an ExecuTorch program runs in XNNPACK: edge-dialect operators, counted before and after."""

    delegated: int  # operators inside XNNPACK subgraphs
    partitions: int  # XNNPACK subgraphs (each one delegate call at run time)
    remaining: dict[str, int] = field(default_factory=dict)  # operators left to portable kernels, by name
    rewritten: dict[str, int] = field(default_factory=dict)  # ATen nodes xnnpack_rewrite replaced, by name
    quantized: int = 0  # int8 programs: operators inside XNNPACK running int8 kernels
    float_ops: dict[str, int] = field(default_factory=dict)  # int8 programs: those inside XNNPACK left float, by name

    @property
    def share(self) -> float:
        total = self.delegated + sum(self.remaining.values())
        return self.delegated / total if total else 1.0

    def summary(self) -> str:
        rest = ", ".join(f"{name} x{count}" for name, count in sorted(self.remaining.items())) or "nothing"
        line = (
            f"XNNPACK runs {self.share:.1%} of the operators ({self.delegated} in {self.partitions} subgraphs); "
            f"left to portable kernels: {rest}"
        )
        if self.quantized:
            kept = ", ".join(f"{name} x{count}" for name, count in sorted(self.float_ops.items())) or "nothing"
            line += f"; int8 in XNNPACK: {self.quantized} operators, float in XNNPACK: {kept}"
        return line


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", None) or str(target)
    return name.removeprefix("aten.")


def _counted(node: torch.fx.Node) -> bool:
    # getitem unpacks tuples, it is not a kernel
    return node.op == "call_function" and _op_name(node) not in ("getitem", "executorch_call_delegate")


def _quantize_op(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and "quantize_per_" in _op_name(node)  # also dequantize_per_*


def _reads_int8(node: torch.fx.Node) -> bool:
    return any(_quantize_op(arg) for arg in node.all_input_nodes)


_LAYOUT_OPS = ("_clone_dim_order", "_to_dim_order_copy", "view_copy", "permute_copy", "clone", "alias_copy")


def delegation(graph_module: torch.fx.GraphModule) -> Delegation:
    """Count operators of a lowered edge program inside and outside its XNNPACK subgraphs.

    An int8 program's operators inside XNNPACK are split into int8 ones, which read dequantized inputs or write only
    to quantize nodes (XNNPACK fuses ``dequantize -> op [-> activation] -> quantize`` into an int8 kernel), and float
    ones (float kernels); quantize nodes and layout-only operators count in neither.
    """
    delegated, partitions, quantized = 0, 0, 0
    float_ops: Counter[str] = Counter()
    for _, child in graph_module.named_children():
        original = getattr(child, "original_module", None)  # a LoweredBackendModule keeps what it replaced
        if original is None:
            continue
        partitions += 1
        nodes = [node for node in original.graph.nodes if _counted(node)]
        delegated += len(nodes)
        for node in nodes:
            name = _op_name(node)
            if _quantize_op(node) or name.removeprefix("dim_order_ops.").split(".")[0] in _LAYOUT_OPS:
                continue
            # int8: it reads a dequantized tensor, or it is fused into an int8 op (a conv's ReLU: reads the conv,
            # writes only to quantize nodes)
            fused = node.users and all(_quantize_op(user) for user in node.users)
            if _reads_int8(node) or (fused and any(_reads_int8(arg) for arg in node.all_input_nodes)):
                quantized += 1
            else:
                float_ops[name] += 1
    remaining = Counter(_op_name(node) for node in graph_module.graph.nodes if _counted(node))
    if not quantized:  # a float program: every operator is float, nothing to list apart
        float_ops.clear()
    return Delegation(delegated, partitions, dict(remaining), quantized=quantized, float_ops=dict(float_ops))


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


def quantize_int8(
    model: nn.Module,
    example: torch.Tensor,
    calibration: Iterable[torch.Tensor],
    settings: Int8Settings = DEFAULT_INT8_SETTINGS,
) -> tuple[torch.fx.GraphModule, dict[str, int]]:
    """The PT2E int8 form of ``model`` at the shape of ``example``, and the ATen nodes :mod:`.xnnpack_rewrite` replaced.

    ``torch.export``, the XNNPACK rewrites (so that the quantizer annotates the operators XNNPACK will run), then
    ExecuTorch's ``XNNPACKQuantizer`` with symmetric int8 activations and per-channel symmetric int8 weights,
    observers fed every batch of ``calibration`` (each of ``example``'s shape), and ``convert_pt2e``: a module
    computing in float with quantize/dequantize pairs, the int8 reference of the ``.pte``. ``settings``: the family's
    (:data:`.int8.INT8_SETTINGS`); ``pte_float_elementwise`` keeps elementwise adds and multiplies float.
    """
    quantizer = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "ExecuTorch int8 export")
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e", "ExecuTorch int8 export")  # installed with executorch
    module = torch.export.export(model, (example,)).module()
    rewritten = rewrite_for_xnnpack(module)
    module = torch.export.export(module, (example,)).module()
    config = quantizer.get_symmetric_quantization_config(is_per_channel=True)
    xnnpack_quantizer = quantizer.XNNPACKQuantizer().set_global(config)
    if settings.pte_float_elementwise:
        xnnpack_quantizer.set_filter_function(lambda node: node.target not in _ELEMENTWISE)
    prepared = pt2e.prepare_pt2e(module, xnnpack_quantizer)
    count = 0
    with torch.no_grad():
        for batch in calibration:
            if tuple(batch.shape) != tuple(example.shape):
                shapes = f"{tuple(batch.shape)}, the graph takes {tuple(example.shape)}"
                raise ValueError(f"calibration batch of shape {shapes}")
            prepared(batch.float().contiguous())
            count += 1
    if not count:
        raise ValueError("ExecuTorch int8 export needs at least one calibration batch")
    return pt2e.convert_pt2e(prepared), rewritten


def save_pte_int8(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    meta_json: str,
    calibration: Iterable[torch.Tensor],
    settings: Int8Settings = DEFAULT_INT8_SETTINGS,
) -> tuple[Delegation, torch.fx.GraphModule]:
    """Write the int8 ``.pte`` of ``model`` (:func:`quantize_int8`); return what XNNPACK runs and the PT2E reference."""
    example = example.contiguous()  # a channels-last example would plan the program for channels-last input
    reference, rewritten = quantize_int8(model, example, calibration, settings)
    data, report = lower_pte(reference, example, meta_json, rewrite=False)
    path.write_bytes(data)
    return dataclasses.replace(report, rewritten=rewritten), reference


def reference_check(output: Any, reference: Any, fp32: Any) -> CheckResult:
    """The pte-reference check: the int8 ``.pte``'s ``output`` against its PT2E ``reference`` on a batch, measured
    against the quantization error ``reference - fp32``; ``max_rel_diff`` is the ratio of the two
    (:data:`PTE_INT8_MAX_RATIO` at most)."""
    output, reference, fp32 = flat_outputs(output), flat_outputs(reference), flat_outputs(fp32)
    if output.shape != reference.shape:
        raise ExportError(f"the .pte returns shape {tuple(output.shape)}, its PT2E reference {tuple(reference.shape)}")
    diff, error = output - reference, reference - fp32
    # an exact reference (nothing quantized changes the output) leaves float rounding to compare with
    floor = 1e-6 * reference.norm().item()
    ratio = diff.norm().item() / max(error.norm().item(), floor, 1e-30)
    passed = bool(diff.isfinite().all()) and ratio <= PTE_INT8_MAX_RATIO
    failures = () if passed else (f"|.pte - reference| / |reference - fp32| = {ratio:.3g} > {PTE_INT8_MAX_RATIO:g}",)
    return CheckResult(PTE_REFERENCE, output.shape[0], diff.abs().max().item(), ratio, passed, failures=failures)


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
