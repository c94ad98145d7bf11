"""Shared layers: each fuse() is exact; drop path; the fuse walker refuses to drop a BatchNorm."""

from __future__ import annotations

import pytest
import torch
from test_contract import randomise_for_fuse_test
from torch import nn

import litevit
from litevit.layers import BNLinear, ConvBN, LinearBN, Residual, SplitLayer, make_divisible, qkv_heads


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (ConvBN(8, 16, 3, 2), (2, 8, 9, 9)),
        (ConvBN(16, 16, 3, groups=16), (2, 16, 7, 7)),
        (LinearBN(8, 12), (2, 5, 8)),
        (LinearBN(8, 12), (3, 8)),
        (BNLinear(8, 4), (3, 8)),
        (BNLinear(8, 4, bias=False), (3, 8)),
    ],
)
def test_fuse_is_exact(layer: nn.Module, shape: tuple[int, ...]) -> None:
    layer = layer.double()
    randomise_for_fuse_test(layer)
    layer.eval()
    fused = layer.fuse()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(fused(x), layer(x), atol=1e-12, rtol=1e-12)


def test_residual_drop_path() -> None:
    block = Residual(nn.Identity(), drop_path=0.5)
    x = torch.ones(1000, 4)
    block.train()
    out = block(x)  # x + x * mask / keep: rows are 1 (dropped) or 3 (kept, rescaled by 2)
    assert set(out[:, 0].tolist()) == {1.0, 3.0}
    assert 400 < (out[:, 0] == 3.0).sum().item() < 600
    block.eval()
    torch.testing.assert_close(block(x), 2 * x)
    assert block.fuse().drop_path == 0.0


def test_make_divisible() -> None:
    assert make_divisible(32 * 0.75) == 24
    assert make_divisible(30) == 32
    assert make_divisible(9, 8) == 16  # rounding down to 8 would lose more than 10 %
    assert make_divisible(3, 8) == 8


def test_fuse_refuses_lonely_batchnorm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(litevit.FuseError, match=r"BatchNorm layers with no neighbour to fold into: 2"):
        litevit.fuse(model)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_split_layer_equals_layer_then_split(kind: str) -> None:
    """Each part is the rows of the one layer: outputs equal ``layer(x).split(sizes, dim)``, with and without bias;
    the parts are independent of the layer they came from."""
    torch.manual_seed(0)
    dim = 1 if kind == "conv" else -1
    for bias in (True, False):
        if kind == "conv":
            layer: nn.Module = nn.Conv2d(8, 1 + 2 * 6, 3, padding=1, bias=bias).double()
            x = torch.randn(2, 8, 5, 7, dtype=torch.float64)
        else:
            layer = nn.Linear(8, 1 + 2 * 6, bias=bias).double()
            x = torch.randn(2, 5, 8, dtype=torch.float64)
        split = SplitLayer.from_layer(layer, [1, 6, 6])
        with torch.no_grad():
            expected = layer(x).split([1, 6, 6], dim=dim)
            got = split(x)
            layer.weight.zero_()
            after = split(x)
        assert [t.shape[dim] for t in got] == [1, 6, 6]
        for g, e, a in zip(got, expected, after, strict=True):
            torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-12)
            assert torch.equal(a, g)
    with pytest.raises(ValueError, match="cannot split the 13 outputs"):
        SplitLayer.from_layer(layer, [1, 6])


def test_qkv_heads_of_joint_and_split_projections_agree() -> None:
    """The heads of a joint ``B, N, 3C`` projection equal, element by element, those of its three-layer fused form,
    and head h holds channels h*c .. (h+1)*c of its part (brute force)."""
    torch.manual_seed(0)
    qkv, x = nn.Linear(8, 3 * 12).double(), torch.randn(2, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        joint = qkv_heads(qkv(x), 4)
        split = qkv_heads(SplitLayer.from_layer(qkv, [12] * 3)(x), 4)
        full = qkv(x)
    for j, s, part in zip(joint, split, range(3), strict=True):
        assert j.shape == (2, 4, 5, 3)
        torch.testing.assert_close(j, s, atol=1e-12, rtol=1e-12)
        for h in range(4):
            assert torch.equal(j[:, h], full[:, :, 12 * part + 3 * h : 12 * part + 3 * h + 3])
