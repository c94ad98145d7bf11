"""MobileViT v1/v2/v3: reference fixtures, unfold/fold, input sizes, fuse details, checkpoint layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import assert_logits_match, fixture_files, load_fixture, recipe_state_dict
from torch import nn

import litevit
from litevit.flops import count_macs
from litevit.layers import SplitLayer
from litevit.models import mobilevit_convert as convert
from litevit.models.mobilevit_blocks import (
    Attention,
    MobileViTBlock,
    MobileViTConfig,
    SeparableAttention,
    fold,
    fold_tokens,
    unfold,
    unfold_tokens,
)

FIXTURES = fixture_files("official/mobilevit_*.json") + fixture_files("timm/mobilevit*.json")
# one of each block kind: v1, v2, v3 on v1, v3 on v2
KINDS = ("mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "mobilevitv3_050")


def _variant_for(external: str) -> str:
    found = litevit.registry.find_variant(external)
    assert found is not None, f"no registered variant is known as {external!r}"
    return found.name


@pytest.mark.parametrize("rel", FIXTURES)
def test_fixture_logits(rel: str, tmp_path) -> None:
    """The recipe weights, saved as a checkpoint file in the fixture's own layout, reproduce its logits."""
    spec = load_fixture(rel)
    path = tmp_path / "checkpoint.pth"
    torch.save(recipe_state_dict(spec), path)
    model = litevit.create_model(_variant_for(spec["variant"]), checkpoint=path)
    assert_logits_match(model, spec)
    assert_logits_match(litevit.fuse(model), spec)  # the deploy form every export uses


def test_fixtures_cover_every_variant() -> None:
    covered = {_variant_for(load_fixture(rel)["variant"]) for rel in FIXTURES}
    assert covered == set(litevit.list_models("mobilevit*"))


def test_unfold_matches_brute_force_and_f_unfold() -> None:
    x = torch.randn(2, 3, 6, 10)
    tokens = unfold(x, 2)  # B, C, P, N
    assert tokens.shape == (2, 3, 4, 15)
    for i in range(2):
        for j in range(2):
            for a in range(3):
                for b in range(5):
                    torch.testing.assert_close(tokens[:, :, i * 2 + j, a * 5 + b], x[:, :, 2 * a + i, 2 * b + j])
    # cvnets v2 unfolds with F.unfold into the same B, C, P, N order
    torch.testing.assert_close(tokens, F.unfold(x, 2, stride=2).reshape(2, 3, 4, 15), atol=0, rtol=0)
    torch.testing.assert_close(fold(tokens, 2, (6, 10)), x, atol=0, rtol=0)


def test_unfold_and_fold_are_pixel_unshuffle_and_shuffle() -> None:
    """The patch order is pixel_unshuffle's channel order (c, ph, pw), and fold is pixel_shuffle, bit for bit: the
    alternative forms the batch-1 graph work measured (benchmarks/speed/batch1_graph.md)."""
    x = torch.randn(2, 3, 6, 10)
    assert torch.equal(unfold(x, 2), F.pixel_unshuffle(x, 2).reshape(2, 3, 4, 15))
    assert torch.equal(fold(unfold(x, 2), 2, (6, 10)), F.pixel_shuffle(unfold(x, 2).reshape(2, 12, 3, 5), 2))


def test_token_unfold_is_unfold_then_tokens_last() -> None:
    """v1's one-permutation unfold equals unfold followed by the token permute it replaces (B, d, P, N -> B*P, N, d),
    bit for bit, and its fold inverts it; a side that is not a patch multiple is the same clear error."""
    x = torch.randn(2, 3, 6, 10)
    tokens = unfold_tokens(x, 2)
    assert tokens.shape == (2 * 4, 15, 3)
    assert torch.equal(tokens, unfold(x, 2).permute(0, 2, 3, 1).reshape(8, 15, 3))
    assert torch.equal(fold_tokens(tokens, 2, (6, 10)), x)
    with pytest.raises(ValueError, match="multiples of the patch"):
        unfold_tokens(torch.randn(1, 3, 7, 10), 2)


@pytest.mark.parametrize("size", [(8, 8), (6, 10), (5, 5), (7, 9), (13, 4)])
@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050"])
def test_fold_unfold_round_trip(name: str, size: tuple[int, int]) -> None:
    """fold(unfold(x)) == x on the grid the block works on, whether or not the input side is a patch multiple."""
    block = next(m for m in litevit.create_model(name).modules() if isinstance(m, MobileViTBlock))
    grid = block._grid(*size)
    assert grid[0] % 2 == grid[1] % 2 == 0 and grid[0] - size[0] in (0, 1) and grid[1] - size[1] in (0, 1)
    x = torch.randn(1, 4, *size, dtype=torch.float64)
    on_grid = x if grid == size else F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
    torch.testing.assert_close(fold(unfold(on_grid, 2), 2, grid), on_grid, atol=0, rtol=0)
    with pytest.raises(ValueError, match="multiples of the patch"):
        if grid == size:
            unfold(torch.randn(1, 1, size[0] + 1, size[1]), 2)
        else:
            unfold(x, 2)


@pytest.mark.parametrize("name", KINDS)
def test_global_path_is_identity_without_transformer(name: str) -> None:
    """With no transformer layers and a plain norm, the global path returns the local features unchanged."""
    block = next(m for m in litevit.create_model(name).modules() if isinstance(m, MobileViTBlock))
    block.transformer = nn.Sequential()
    block.norm = nn.Identity()
    x = torch.randn(2, block.local_proj.out_channels, 10, 14)
    torch.testing.assert_close(block._global(x), x, atol=0, rtol=0)


@pytest.mark.parametrize("name", [*KINDS[:2], *(pytest.param(name, marks=pytest.mark.slow) for name in KINDS[2:])])
def test_input_sizes_run(name: str) -> None:
    """160 and 200 x 232 need interpolation inside the blocks (5 x 5 and odd grids at stride 32)."""
    model = litevit.create_model(name).eval()
    for size in (160, 192, 256, 288, 320, (256, 320), (200, 232)):
        height, width = (size, size) if isinstance(size, int) else size
        with torch.no_grad():
            features = model.forward_intermediates(torch.randn(1, 3, height, width), intermediates_only=True)
            out = model.forward_head(model.final_conv(features[-1]))
        assert out.shape == (1, 1000) and torch.isfinite(out).all()
        assert [f.shape[1] for f in features] == list(model.config.dims)


@pytest.mark.slow
@pytest.mark.parametrize("name", KINDS)
def test_largest_size_runs(name: str) -> None:
    with torch.no_grad():
        out = litevit.create_model(name).eval()(torch.randn(1, 3, 512, 512))
    assert torch.isfinite(out).all()


def test_v2_resizes_block_input_like_cvnets() -> None:
    """v2 interpolates the block input with align_corners=True and keeps the enlarged size (cvnets behaviour)."""
    block = next(m for m in litevit.create_model("mobilevitv2_050").modules() if isinstance(m, MobileViTBlock))
    x = torch.randn(1, block.local_conv[0].conv.in_channels, 5, 7)
    assert block.eval()(x).shape[-2:] == (6, 8)
    v1_block = next(m for m in litevit.create_model("mobilevit_xxs").modules() if isinstance(m, MobileViTBlock))
    y = torch.randn(1, v1_block.local_conv[0].conv.in_channels, 5, 7)
    assert v1_block.eval()(y).shape[-2:] == (5, 7)


@pytest.mark.parametrize("name", KINDS)
def test_fuse_folds_norm_affine_and_attention_scale(name: str) -> None:
    """Fused model equals the original in float64 at a size that needs interpolation, with plain norms left."""
    from test_contract import randomise_for_fuse_test

    model = litevit.create_model(name).double()
    randomise_for_fuse_test(model)
    with torch.no_grad():  # non-trivial norm affine terms, so that folding them is actually tested
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
    model.eval()
    fused = litevit.fuse(model)
    norms = [m for m in fused.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm))]
    assert norms and all(m.weight is None for m in norms)
    x = torch.randn(2, 3, 160, 224, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-9, rtol=1e-9)


def test_bad_input_is_a_clear_error() -> None:
    model = litevit.create_model("mobilevit_xxs")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 256, 256))
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.randn(1, 3, 16, 256))


def test_layout_detection_and_unknown_keys() -> None:
    assert convert.detect({"conv_1.block.conv.weight": torch.zeros(1)}) == "official"
    assert convert.detect({"stem.conv.weight": torch.zeros(1)}) == "timm"
    assert convert.detect(litevit.create_model("mobilevit_xxs").state_dict()) is None
    # an unknown key is an error that names it (the official key table has no row for it)
    renamed = convert.to_litevit({"conv_1.block.conv.weight": torch.zeros(1)}, "official")
    assert renamed.keys() == {"stem.0.conv.weight"}
    with pytest.raises(ValueError, match="unknown official-layout checkpoint key 'mystery.weight'"):
        convert.to_litevit({"conv_1.block.conv.weight": torch.zeros(1), "mystery.weight": torch.zeros(1)}, "official")


def test_fresh_head_for_other_num_classes(tmp_path) -> None:
    spec = load_fixture("timm/mobilevit_xxs.json")
    path = tmp_path / "checkpoint.pth"
    torch.save(recipe_state_dict(spec), path)
    model = litevit.create_model("mobilevit_xxs", checkpoint=path, num_classes=10)
    assert model(torch.randn(1, 3, 256, 256)).shape == (1, 10)


def _cvnets_minus_matmul(config: MobileViTConfig, side: int) -> int:
    """Brute force, from the config alone: how ml-cvnets' profiler count differs from the true matmul count.

    Transformer stages run at strides 8, 16, 32. Per layer on P pixel positions x N patches of width C: cvnets
    counts attention (v1) as 2 * P * N * C * C instead of 2 * P * N * N * C, and one MAC per output element of
    every biased linear / 1x1 conv (v1: qkv, proj, fc1, fc2; v2: the same, qkv with one extra query channel);
    the classifier's bias adds num_classes.
    """
    diff = config.num_classes
    for stride, dim, depth in zip((8, 16, 32), config.transformer_dims, config.transformer_depths, strict=True):
        pixels = config.patch_size**2
        patches = (side // stride // config.patch_size) ** 2
        tokens = pixels * patches
        if config.attention == "mhsa":
            hidden = int(config.mlp_ratio * dim)
            attention = 2 * pixels * patches * dim * dim - 2 * pixels * patches * patches * dim
            biases = tokens * (3 * dim + dim + hidden + dim)
        else:
            hidden = int(config.mlp_ratio * dim) // 16 * 16
            attention = 0  # separable attention: element-wise work, counted by neither
            biases = tokens * (1 + 2 * dim + dim + hidden + dim)
        diff += depth * (attention + biases)
    return diff


@pytest.mark.parametrize("name", [*KINDS, "mobilevitv3_xxs_l2"])
def test_cvnets_mac_convention_differs_only_by_attention_and_biases(name: str) -> None:
    """count_macs(convention="cvnets") minus the true count equals the difference worked out from the config."""
    model = litevit.create_model(name)
    true = count_macs(model, 256)
    cvnets = count_macs(model, 256, convention="cvnets")
    assert cvnets - true == _cvnets_minus_matmul(model.config, 256)


def test_cvnets_convention_reproduces_the_published_counts_to_the_unit() -> None:
    """The v3 README gives MACs to 1 M; the convention lands on them, where the true count is 15 % higher."""
    for name in ("mobilevitv3_xxs", "mobilevitv3_xxs_l2"):
        model = litevit.create_model(name)
        published = litevit.get_variant(name).paper.macs_m
        assert round(count_macs(model, 256, convention="cvnets") / 1e6) == published
        assert count_macs(model, 256) / 1e6 > 1.1 * published


def test_unknown_mac_convention_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="convention must be one of"):
        count_macs(litevit.create_model("mobilevit_xxs"), 256, convention="fvcore")


SEPARABLE = [n for n in litevit.list_models("mobilevitv*") if litevit.get_variant(n).config.attention == "separable"]


MHSA = [n for n in litevit.list_models("mobilevit*") if litevit.get_variant(n).config.attention == "mhsa"]


@pytest.mark.parametrize("name", MHSA)
def test_fused_v1_attention_has_separate_projections(name: str) -> None:
    """Every v1 and v3-on-v1 variant's fused form projects query (scale folded in), key and value with separate
    linear layers, the rows of the one unfused projection, and computes the unfused model (float64)."""
    from test_contract import randomise_for_fuse_test

    model = litevit.create_model(name).double()
    randomise_for_fuse_test(model)
    model.eval()
    unfused = [m for m in model.modules() if isinstance(m, Attention)]
    fused = litevit.fuse(model)
    attentions = [m for m in fused.modules() if isinstance(m, Attention)]
    assert len(attentions) == len(unfused) and all(isinstance(m.qkv, SplitLayer) for m in attentions)
    for before, after in zip(unfused, attentions, strict=True):
        dim = before.proj.out_features
        assert [p.out_features for p in after.qkv.parts] == [dim] * 3 and after.scale == 1.0
        assert torch.equal(after.qkv.parts[2].weight, before.qkv.weight[2 * dim :])
    x = torch.randn(1, 3, 256, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(litevit.fuse(fused)(x), fused(x), atol=0, rtol=0)


@pytest.mark.parametrize("name", SEPARABLE)
def test_fused_separable_attention_has_separate_projections(name: str) -> None:
    """Every v2 and v3-on-v2 variant's fused form projects query, key and value with separate convolutions (the
    rows of the one unfused projection, norm affine folded in) and computes the unfused model (float64)."""
    from test_contract import randomise_for_fuse_test

    model = litevit.create_model(name).double()
    randomise_for_fuse_test(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
    model.eval()
    fused = litevit.fuse(model)
    attentions = [m for m in fused.modules() if isinstance(m, SeparableAttention)]
    assert attentions and all(isinstance(m.qkv, SplitLayer) for m in attentions)
    assert all([p.out_channels for p in m.qkv.parts] == [1, m.dim, m.dim] for m in attentions)
    x = torch.randn(1, 3, 256, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(litevit.fuse(fused)(x), fused(x), atol=0, rtol=0)
