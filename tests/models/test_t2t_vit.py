"""T2T-ViT: parity with the official fixtures, checkpoint layouts, the T2T module, position tables, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from reference import assert_logits_match, fixture_files, load_fixture, recipe_state_dict

import litevit
from litevit.models import t2t_vit_convert as convert_t2t
from litevit.models.t2t_vit_blocks import sinusoid_table
from litevit.weights.reading import CheckpointError

MAIN = [
    "t2t_vit_7",
    "t2t_vit_10",
    "t2t_vit_12",
    "t2t_vit_14",
    "t2t_vit_19",
    "t2t_vit_24",
    "t2t_vit_t_14",
    "t2t_vit_t_19",
    "t2t_vit_t_24",
]
# how the official code ships weights: timm's CheckpointSaver (state_dict + state_dict_ema), a bare state dict, a
# DataParallel state dict; each fixture is written in one of them, in turn
LAYOUTS = ("saver", "bare", "module")


def brute_force_sinusoid(num_positions: int, dim: int) -> torch.Tensor:
    """The official ``get_sinusoid_encoding``, entry by entry with ``math``."""
    rows = []
    for pos in range(num_positions):
        row = []
        for j in range(dim):
            angle = pos / 10000 ** (2 * (j // 2) / dim)
            row.append(math.sin(angle) if j % 2 == 0 else math.cos(angle))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64).float()[None]


def official_state(spec: dict, with_pos_embed: bool) -> dict[str, torch.Tensor]:
    """The fixture's weights; its fixed sinusoid table either left out or computed independently."""

    def non_generated(key: str, shape: list[int], dtype: str) -> torch.Tensor | None:
        if key == "pos_embed" and with_pos_embed:
            return brute_force_sinusoid(shape[1], shape[2])
        return None

    return recipe_state_dict(spec, non_generated)


def write_checkpoint(state: dict[str, torch.Tensor], layout: str, path) -> str:
    if layout == "saver":
        torch.save({"epoch": 309, "arch": "t2t_vit", "state_dict": state, "state_dict_ema": state}, path)
    elif layout == "bare":
        torch.save(state, path)
    elif layout == "module":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        raise AssertionError(layout)
    return str(path)


def _fixtures() -> list:
    params = []
    for i, fixture in enumerate(fixture_files("official/t2t_vit_*.json")):
        name = fixture.rsplit("/", 1)[-1].removesuffix(".json")
        if name not in litevit.list_models() and not fixture.startswith("<missing>"):
            continue  # an ablation variant that is not registered
        params.append(pytest.param(fixture, LAYOUTS[i % len(LAYOUTS)], id=f"{name}-{LAYOUTS[i % 3]}"))
    return params


@pytest.mark.parametrize(("fixture", "layout"), _fixtures())
def test_fixture_parity(fixture: str, layout: str, tmp_path) -> None:
    spec = load_fixture(fixture)
    variant = litevit.registry.find_variant(spec["variant"])
    assert variant is not None, f"no registered variant for {spec['variant']}"
    state = official_state(spec, with_pos_embed=layout != "bare")
    path = write_checkpoint(state, layout, tmp_path / "checkpoint.pth.tar")
    model = litevit.create_model(variant.name, checkpoint=path)
    assert_logits_match(model, spec)


def test_fixture_set_is_complete() -> None:
    files = {f.rsplit("/", 1)[-1].removesuffix(".json") for f in fixture_files("official/t2t_vit_*.json")}
    if any(f.startswith("<missing>") for f in files):
        pytest.skip("reference fixtures absent")
    assert set(MAIN) <= files
    assert set(MAIN) <= set(litevit.list_models("t2t_vit*"))


@pytest.fixture(scope="module")
def t2t7() -> tuple[dict, dict[str, torch.Tensor]]:
    spec = load_fixture("official/t2t_vit_7.json")
    return spec, official_state(spec, with_pos_embed=True)


def test_ema_weights_are_taken_as_official_evaluation_does(t2t7, tmp_path) -> None:
    """T2T-ViT's ``main.py`` evaluates ``state_dict_ema`` (``--model-ema`` is on by default): litevit takes it."""
    spec, state = t2t7
    raw = {k: v + 0.05 if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "saver.pth.tar"
    torch.save({"state_dict": raw, "state_dict_ema": state}, path)
    model = litevit.create_model("t2t_vit_7", checkpoint=path)
    assert model.model_info.taken == "state_dict_ema (timm CheckpointSaver)"
    assert_logits_match(model, spec)
    assert_logits_match(litevit.load_checkpoint(litevit.create_model("t2t_vit_7"), path, use_ema=True), spec)
    raw_model = litevit.load_checkpoint(litevit.create_model("t2t_vit_7"), path, use_ema=False)
    with pytest.raises(AssertionError):  # the non-EMA weights give other logits: the fixture tells them apart
        assert_logits_match(raw_model, spec)


def test_random_features_are_loaded_not_redrawn(t2t7) -> None:
    _, state = t2t7
    a, b = litevit.create_model("t2t_vit_7"), litevit.create_model("t2t_vit_7")
    features = a.tokens_to_token.attention1.random_features
    assert not torch.equal(features, b.tokens_to_token.attention1.random_features), "drawn at random on build"
    assert not features.requires_grad
    # orthogonal rows of norm sqrt(m), as the official initialisation
    m = features.shape[0]
    torch.testing.assert_close(features @ features.t(), m * torch.eye(m), atol=1e-4, rtol=1e-4)
    loaded = litevit.create_model("t2t_vit_7", checkpoint=state)
    for i in (1, 2):
        expected = state[f"tokens_to_token.attention{i}.w"]
        assert torch.equal(getattr(loaded.tokens_to_token, f"attention{i}").random_features, expected)
    without = {k: v for k, v in state.items() if not k.endswith(".w")}
    with pytest.raises(CheckpointError, match="random_features"):
        litevit.create_model("t2t_vit_7", checkpoint=without)


def test_official_qk_scale_quirk_gives_another_network(t2t7) -> None:
    """The factories' ``pretrained=True`` branch sets ``qk_scale = embed_dim ** -0.5``; evaluation does not."""
    spec, state = t2t7
    model = litevit.create_model("t2t_vit_7", checkpoint=state)
    assert model.blocks[0].attn.scale == (256 // 4) ** -0.5
    quirk = litevit.create_model("t2t_vit_7", checkpoint=state, qk_scale=256**-0.5)
    assert quirk.blocks[0].attn.scale == 256**-0.5
    with pytest.raises(AssertionError):
        assert_logits_match(quirk, spec)


def test_token_transformer_scale_uses_input_width() -> None:
    model = litevit.create_model("t2t_vit_t_14")
    assert model.tokens_to_token.attention1.attn.scale == (3 * 7 * 7) ** -0.5
    assert model.tokens_to_token.attention2.attn.scale == (64 * 3 * 3) ** -0.5


def test_converter_detects_and_renames(t2t7) -> None:
    _, state = t2t7
    assert convert_t2t.detect(state) == "official"
    converted = convert_t2t.to_litevit(state, "official")
    assert "tokens_to_token.attention1.random_features" in converted
    assert "tokens_to_token.attention2.mlp.fc2.bias" in converted
    assert not any(k.endswith(".w") or ".mlp.0." in k for k in converted)
    assert converted.keys() - {"pos_embed"} == litevit.create_model("t2t_vit_7").state_dict().keys() - {"pos_embed"}
    assert convert_t2t.detect(converted) is None  # litevit's own layout is left alone
    own = litevit.create_model("t2t_vit_t_14").state_dict()
    assert convert_t2t.detect(own) is None  # T2T-ViT_t: official names are litevit's


def test_sinusoid_table_matches_brute_force() -> None:
    for positions, dim in ((197, 256), (50, 448)):
        torch.testing.assert_close(sinusoid_table(positions, dim), brute_force_sinusoid(positions, dim))
    model = litevit.create_model("t2t_vit_7")
    assert not model.pos_embed.requires_grad
    assert torch.equal(model.pos_embed, brute_force_sinusoid(197, 256))


def test_soft_split_token_counts_and_unfold_order() -> None:
    model = litevit.create_model("t2t_vit_7").eval()
    t2t = model.tokens_to_token
    assert t2t.grids((224, 224)) == [(56, 56), (28, 28), (14, 14)]
    x = torch.randn(1, 3, 224, 224)
    first = t2t.soft_split0(x)
    reference = torch.nn.Unfold(kernel_size=7, stride=4, padding=2)(x).transpose(1, 2)
    assert torch.equal(first, reference) and first.shape == (1, 56 * 56, 3 * 7 * 7)
    with torch.no_grad():
        tokens = t2t(x)
        features = model.forward_features(x)
        maps = model.forward_intermediates(x, norm=True, intermediates_only=True)
    assert tokens.shape == (1, 196, 256)
    assert features.shape == (1, 197, 256)
    assert [tuple(m.shape) for m in maps] == [(1, 64, 56, 56), (1, 64, 28, 28), (1, 256, 14, 14)]
    torch.testing.assert_close(maps[-1].flatten(2).transpose(1, 2), features[:, 1:])


@pytest.mark.parametrize("size", [224, 288, 384, (224, 288)])
def test_other_resolutions_run(size) -> None:
    model = litevit.create_model("t2t_vit_7", img_size=size).eval()
    height, width = (size, size) if isinstance(size, int) else size
    tokens = (height // 16) * (width // 16)
    assert model.pos_embed.shape == (1, tokens + 1, 256)
    assert torch.equal(model.pos_embed, brute_force_sinusoid(tokens + 1, 256))
    with torch.no_grad():
        out = model(torch.randn(1, 3, height, width))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_checkpoint_table_is_interpolated_at_another_size(t2t7) -> None:
    _, state = t2t7
    table = state["pos_embed"]
    model = litevit.create_model("t2t_vit_7", img_size=384, checkpoint=state)
    # the official utils.resize_pos_embed: class row kept, the 14 x 14 grid resized bicubically to 24 x 24
    grid = table[0, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid.double(), size=(24, 24), mode="bicubic", align_corners=False)
    expected = torch.cat((table[:, :1], resized.permute(0, 2, 3, 1).reshape(1, 576, -1).float()), dim=1)
    torch.testing.assert_close(model.pos_embed, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(model.pos_embed, brute_force_sinusoid(577, 256), atol=1e-2)
    # the other weights arrive unchanged
    assert torch.equal(model.cls_token, state["cls_token"])
    # a checkpoint without a table keeps the model's own for that size
    without = {k: v for k, v in state.items() if k != "pos_embed"}
    fresh = litevit.create_model("t2t_vit_7", img_size=384, checkpoint=without)
    assert torch.equal(fresh.pos_embed, brute_force_sinusoid(577, 256))


def test_new_num_classes_keeps_fresh_head(t2t7) -> None:
    _, state = t2t7
    model = litevit.create_model("t2t_vit_7", num_classes=10, checkpoint=state)
    assert model.head.weight.shape == (10, 256)
    assert torch.equal(model.norm.weight, state["norm.weight"])
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 10)


def test_frozen_tables_get_no_gradient_and_no_decay() -> None:
    model = litevit.create_model("t2t_vit_7").train()
    model(torch.randn(2, 3, 224, 224)).sum().backward()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        "pos_embed",
        "tokens_to_token.attention1.random_features",
        "tokens_to_token.attention2.random_features",
    }
    assert all(model.get_parameter(n).grad is None for n in frozen)
    assert model.cls_token.grad is not None and "cls_token" in model.no_weight_decay()


def test_fuse_leaves_model_unchanged_and_equal() -> None:
    model = litevit.create_model("t2t_vit_t_14", img_size=64).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = litevit.fuse(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fused(x), model(x))
    assert fused is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert fused.state_dict().keys() == before.keys()


def test_performer_survives_autocast() -> None:
    model = litevit.create_model("t2t_vit_7", img_size=64).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all()
    assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_bad_inputs_raise_clear_errors() -> None:
    model = litevit.create_model("t2t_vit_7")
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 3, H, W\)"):
        model(torch.randn(1, 1, 224, 224))
    with pytest.raises(ValueError, match="built for 224x224 inputs"):
        model(torch.randn(1, 3, 256, 256))
    with pytest.raises(ValueError, match="tokens_type"):
        litevit.create_model("t2t_vit_7", tokens_type="convolution")
    with pytest.raises(ValueError, match="not divisible"):
        litevit.create_model("t2t_vit_7", num_heads=5)
    with pytest.raises(ValueError, match="three soft splits"):
        litevit.create_model("t2t_vit_7", kernel_sizes=(7, 3))
    with pytest.raises(CheckpointError, match="looks like t2t_vit_10"):
        litevit.create_model("t2t_vit_7", checkpoint=litevit.create_model("t2t_vit_10").state_dict())


def test_data_config_is_the_official_evaluation() -> None:
    for name in MAIN:
        data = litevit.get_variant(name).data
        assert (data.img_size, data.crop_pct, data.interpolation) == (224, 0.9, "bicubic")


def test_dropout_only_in_training() -> None:
    x = torch.randn(2, 3, 64, 64)
    quiet = litevit.create_model("t2t_vit_7", img_size=64, t2t_dropout=0.0, drop_path=0.0)
    torch.testing.assert_close(quiet.train()(x), quiet.eval()(x))
    noisy = litevit.create_model("t2t_vit_7", img_size=64)  # the official 0.1 performer dropout and drop path
    assert not torch.allclose(noisy.train()(x), noisy.eval()(x))
