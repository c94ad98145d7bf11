"""Shared layers: each fuse() is exact; drop path; the fuse walker refuses to drop a BatchNorm."""

from __future__ import annotations

import pytest
import torch
from test_contract import randomise_for_fuse_test
from torch import nn

import litevit
from litevit.layers import BNLinear, ConvBN, LinearBN, Residual, make_divisible


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
