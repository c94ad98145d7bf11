"""The structure of exported OpenVINO graphs that batch-1 speed depends on (benchmarks/speed/batch1_graph.md): one
attention node per EfficientViT head, no channel split in MobileViTv2/v3's separable attention."""

from __future__ import annotations

import collections

import pytest

import litevit
from litevit.deploy.exporting import export
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
