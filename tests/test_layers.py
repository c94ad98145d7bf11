"""Shared layers: each fuse() is exact; drop path; the fuse walker refuses to drop a BatchNorm."""

from __future__ import annotations

import pytest
import torch
from test_contract import randomise_for_fuse_test
from torch import nn

import litevit
from litevit.layers import BNLinear, ConvBN, LinearBN, Residual, SplitConv, channel_groups, make_divisible


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


def test_split_conv_equals_conv_then_split() -> None:
    """Each part is the rows of the one convolution: outputs equal ``conv(x).split(sizes)``, with and without bias."""
    torch.manual_seed(0)
    for bias in (True, False):
        conv = nn.Conv2d(8, 1 + 2 * 6, 3, padding=1, bias=bias).double()
        x = torch.randn(2, 8, 5, 7, dtype=torch.float64)
        split = SplitConv.from_conv(conv, [1, 6, 6])
        with torch.no_grad():
            expected = conv(x).split([1, 6, 6], dim=1)
            got = channel_groups(split(x), [1, 6, 6])
        assert [t.shape[1] for t in got] == [1, 6, 6]
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="cannot split the 13 outputs"):
        SplitConv.from_conv(conv, [1, 6])
