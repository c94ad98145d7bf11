"""The structure of exported OpenVINO graphs that batch-1 speed depends on (benchmarks/speed/batch1_graph.md): one
attention node per EfficientViT head, every attention run by the CPU plugin as one fused node, no channel split in
MobileViT's attentions."""

from __future__ import annotations

import collections

import pytest

import litevit
from litevit._extras import has_native_bf16
from litevit.deploy.exporting import export
from litevit.deploy.openvino import attention_nodes, openvino_config
from litevit.models.efficientvit_msra import CascadedGroupAttention

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'litevit[openvino]'")


def _ops(name: str, tmp_path) -> collections.Counter[str]:
    path = tmp_path / f"{name}.xml"
    export(litevit.create_model(name), path, batch=1)
    return collections.Counter(op.get_type_name() for op in ov.Core().read_model(path).get_ops())


def test_efficientvit_heads_are_one_attention_node_each(tmp_path) -> None:
    """Each cascaded-group-attention head is one ScaledDotProductAttention: no MatMul or Softmax node is left but
    the classifier's MatMul."""
    heads = sum(m.num_heads for m in litevit.create_model("efficientvit_m0").modules()
                if isinstance(m, CascadedGroupAttention))  # fmt: skip
    ops = _ops("efficientvit_m0", tmp_path)
    assert ops["ScaledDotProductAttention"] == heads == 24
    assert ops["Softmax"] == 0 and ops["MatMul"] == 1, ops


@pytest.mark.parametrize("name", ["mobilevitv2_050", pytest.param("mobilevitv3_050", marks=pytest.mark.slow)])
def test_separable_attention_has_no_split_node(name: str, tmp_path) -> None:
    """Query, key and value come from separate convolutions: no VariadicSplit or Split node in the graph."""
    ops = _ops(name, tmp_path)
    assert ops["VariadicSplit"] == 0 and ops["Split"] == 0, ops
    assert ops["Softmax"] == sum(litevit.get_variant(name).config.transformer_depths)  # one attention per layer


@pytest.mark.parametrize(
    "name",
    [
        "levit_128s",
        "mobilevit_xxs",
        *(pytest.param(name, marks=pytest.mark.slow) for name in ("efficientvit_m0", "t2t_vit_7", "mobilevitv3_xxs")),
    ],
)
def test_every_attention_runs_as_one_fused_node(name: str, tmp_path) -> None:
    """In the graph the CPU plugin runs (f32, and bf16 where the CPU has it), each attention of the exported file
    (ScaledDotProductAttention, or a Softmax between two MatMuls) is one ``Subgraph`` node: query-key product,
    softmax and value product in one kernel. MobileViT v1's query and value reach it straight from their
    projections (no Transpose node of their own)."""
    path = tmp_path / f"{name}.xml"
    export(litevit.create_model(name), path, batch=1)
    core = ov.Core()
    ir = core.read_model(path)
    for precision in ("f32", "bf16") if has_native_bf16() else ("f32",):
        compiled = core.compile_model(ir, "CPU", openvino_config(1, precision))
        held = attention_nodes(ir, compiled)
        assert held and all(types == ["Subgraph"] for types in held.values()), (precision, held)
        if name.startswith("mobilevit"):
            attention = [n for n in compiled.get_runtime_model().get_ops() if n.get_friendly_name() in held]
            sources = [i.get_source_output().get_node().get_rt_info()["layerType"].astype(str)
                       for n in attention for i in n.inputs()]  # fmt: skip
            assert sources.count("Transpose") <= len(attention), sources  # the key's alone


@pytest.mark.parametrize("name", ["mobilevit_xxs", pytest.param("mobilevitv3_xxs", marks=pytest.mark.slow)])
def test_v1_attention_has_no_split_node(name: str, tmp_path) -> None:
    """MobileViT v1's query, key and value come from separate linear layers: no VariadicSplit or Split node."""
    ops = _ops(name, tmp_path)
    assert ops["VariadicSplit"] == 0 and ops["Split"] == 0, ops
    assert ops["ScaledDotProductAttention"] == sum(litevit.get_variant(name).config.transformer_depths)
