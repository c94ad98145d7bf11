"""EfficientViT (MSRA): fixture parity, the cascade, windows and padding, other resolutions, fuse, errors."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from reference import assert_logits_match, fixture_files, load_fixture, recipe_state_dict
from safetensors.torch import save_file
from test_contract import randomise_for_fuse_test

import litevit
from litevit.layers import resample_table
from litevit.models.efficientvit_msra import CascadedGroupAttention, LocalWindowAttention
from litevit.weights.reading import CheckpointError

FIXTURES = fixture_files("official/EfficientViT_M*.json") + fixture_files("timm/efficientvit_m*.json")


def official_bias_idxs(resolution: int) -> torch.Tensor:
    """The attention-bias index exactly as the official code enumerates it (first-seen offset order)."""
    points = list(itertools.product(range(resolution), range(resolution)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = [offsets.setdefault((abs(p[0] - q[0]), abs(p[1] - q[1])), len(offsets)) for p in points for q in points]
    return torch.tensor(idxs).view(len(points), len(points))


def _non_generated(key: str, shape: list[int], dtype: str) -> torch.Tensor | None:
    if key.endswith("attention_bias_idxs"):
        return official_bias_idxs(int(shape[0] ** 0.5))
    return None


def write_checkpoint(spec: dict, tmp_path, state: dict[str, torch.Tensor] | None = None) -> str:
    """The fixture's weights saved the way each layout ships them."""
    state = recipe_state_dict(spec, _non_generated) if state is None else state
    if spec["layout"] == "official":
        path = tmp_path / f"{spec['variant']}.pth"
        torch.save({"model": state, "epoch": 299}, path)  # official checkpoints nest the weights under "model"
    else:
        path = tmp_path / f"{spec['variant']}.safetensors"
        save_file(state, str(path))
    return str(path)


def _fixture_model_name(spec: dict) -> str:
    variant = litevit.registry.find_variant(spec["variant"])
    assert variant is not None, f"no registered variant for {spec['variant']}"
    return variant.name


@pytest.mark.parametrize("fixture", FIXTURES)
def test_fixture_parity(fixture: str, tmp_path) -> None:
    spec = load_fixture(fixture)
    model = litevit.create_model(_fixture_model_name(spec), checkpoint=write_checkpoint(spec, tmp_path))
    assert_logits_match(model, spec)
    assert_logits_match(litevit.fuse(model), spec)  # the deploy form every export uses


def test_fixture_set_is_complete() -> None:
    files = [f for f in FIXTURES if not f.startswith("<missing>")]
    if not files:
        pytest.skip("reference fixtures absent")
    assert len(files) == 12  # M0..M5, official and timm


def test_official_checkpoint_carries_rebuilt_buffers(tmp_path) -> None:
    """The official file holds attention_bias_idxs and num_batches_tracked; they load without complaint."""
    spec = load_fixture("official/EfficientViT_M0.json")
    state = recipe_state_dict(spec, _non_generated)
    assert any(k.endswith("attention_bias_idxs") for k in state)
    assert any(k.endswith("num_batches_tracked") for k in state)
    litevit.create_model("efficientvit_m0", checkpoint=write_checkpoint(spec, tmp_path, state))


def test_official_linear_shaped_1x1_weights_load(tmp_path) -> None:
    """Released official checkpoints may store 1x1 convs as 2-D weights (their loader unsqueezes them)."""
    spec = load_fixture("official/EfficientViT_M0.json")
    state = recipe_state_dict(spec, _non_generated)
    flat = {k: v.flatten(1) if v.ndim == 4 and v.shape[-2:] == (1, 1) else v for k, v in state.items()}
    assert sum(v.ndim == 2 for v in flat.values()) > 20
    model = litevit.create_model("efficientvit_m0", checkpoint=write_checkpoint(spec, tmp_path, flat))
    assert_logits_match(model, spec)


@pytest.mark.parametrize("resolution", [7, 4, 5])
def test_bias_index_matches_official_enumeration(resolution: int) -> None:
    attn = CascadedGroupAttention(64, 16, 4, (resolution, resolution), (5, 5, 5, 5))
    assert torch.equal(attn.attention_bias_idxs, official_bias_idxs(resolution))


def _random_attention(window: tuple[int, int] = (7, 7), heads: int = 4, dim: int = 64) -> CascadedGroupAttention:
    torch.manual_seed(0)
    attn = CascadedGroupAttention(dim, 16, heads, window, (7, 5, 3, 3)).double()
    randomise_for_fuse_test(attn)
    with torch.no_grad():
        attn.attention_biases.normal_()
    return attn.eval()


def test_cascade_is_real() -> None:
    """Changing split 0 changes every head (each later head sees the previous output); split 3 only head 3."""
    attn = _random_attention()
    x = torch.randn(2, 64, 7, 7, dtype=torch.float64)
    split = 64 // 4
    with torch.no_grad():
        base = attn.heads(x)
        first = x.clone()
        first[:, :split] += 1.0
        changed = attn.heads(first)
        last = x.clone()
        last[:, 3 * split :] += 1.0
        changed_last = attn.heads(last)
    for i in range(4):
        assert (changed[i] - base[i]).abs().max() > 1e-3, f"head {i} ignores the first split"
    for i in range(3):
        assert torch.equal(changed_last[i], base[i]), f"head {i} sees a later split"
    assert (changed_last[3] - base[3]).abs().max() > 1e-3


def _reference_windows(module: LocalWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Window attention written out: always pad (possibly by 0), cut windows by slicing, stitch them back."""
    _, _, H, W = x.shape
    wh, ww = min(module.window[0], H), min(module.window[1], W)
    padded = F.pad(x, (0, -W % ww, 0, -H % wh))
    corners = list(itertools.product(range(0, padded.shape[2], wh), range(0, padded.shape[3], ww)))
    windows = torch.stack([padded[:, :, y : y + wh, x0 : x0 + ww] for y, x0 in corners], dim=1)
    out = module.attn(windows.flatten(0, 1)).view_as(windows)
    result = torch.empty_like(padded)
    for n, (y, x0) in enumerate(corners):
        result[:, :, y : y + wh, x0 : x0 + ww] = out[:, n]
    return result[:, :, :H, :W]


@pytest.mark.parametrize("size", [(14, 14), (7, 7), (15, 20), (8, 10)])
def test_window_attention_matches_written_out_windows(size: tuple[int, int]) -> None:
    module = LocalWindowAttention(64, 16, 4, (7, 7), (7, 5, 3, 3)).double()
    module.attn = _random_attention()
    x = torch.randn(2, 64, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), _reference_windows(module, x), atol=1e-12, rtol=1e-12)


def test_window_smaller_than_table_uses_the_offsets_it_contains() -> None:
    """A 4x5 map in a 7x7-window model equals a 4x5-window attention whose table is the |dy|<4, |dx|<5 corner."""
    big = _random_attention((7, 7))
    small = CascadedGroupAttention(64, 16, 4, (4, 5), (7, 5, 3, 3)).double().eval()
    state = dict(big.state_dict())
    state["attention_biases"] = state["attention_biases"][:, :4, :5]
    small.load_state_dict(state)
    x = torch.randn(2, 64, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x), atol=1e-12, rtol=1e-12)


def _swap_in_reference_windows(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, LocalWindowAttention):
            module.forward = lambda x, m=module: _reference_windows(m, x)


def test_no_padding_needed_gives_identical_logits() -> None:
    """At 224 every map is a window multiple: the logits equal, bit for bit, those of the always-pad path."""
    model = litevit.create_model("efficientvit_m0").double()
    randomise_for_fuse_test(model)
    model.eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        direct = model(x)
        _swap_in_reference_windows(model)
        assert torch.equal(model(x), direct)


def test_padded_input_matches_written_out_windows() -> None:
    model = litevit.create_model("efficientvit_m0").double()
    randomise_for_fuse_test(model)
    model.eval()
    # stage maps 11x15, 6x8, 3x4: padded to 14x21 in 7x7 windows, a 6x7 sub-window padded to 6x14, a 3x4 sub-window
    x = torch.randn(1, 3, 176, 240, dtype=torch.float64)
    with torch.no_grad():
        direct = model(x)
        _swap_in_reference_windows(model)
        torch.testing.assert_close(model(x), direct, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("size", [224, 256, 320, (240, 320)])
def test_input_sizes_run(size: int | tuple[int, int]) -> None:
    height, width = (size, size) if isinstance(size, int) else size
    x = torch.randn(1, 3, height, width)
    with torch.no_grad():
        for model in (litevit.create_model("efficientvit_m0"), litevit.create_model("efficientvit_m0", img_size=size)):
            out = model.eval()(x)
            assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_windows_follow_img_size() -> None:
    def windows(model: torch.nn.Module) -> list[tuple[int, int]]:
        return [stage.blocks[0].mixer.m.window for stage in model.stages]

    assert windows(litevit.create_model("efficientvit_m0")) == [(7, 7), (7, 7), (4, 4)]
    assert windows(litevit.create_model("efficientvit_m0", img_size=320)) == [(7, 7), (7, 7), (5, 5)]
    assert windows(litevit.create_model("efficientvit_m0", img_size=(240, 320))) == [(7, 7), (7, 7), (4, 5)]


def test_intermediates() -> None:
    model = litevit.create_model("efficientvit_m1").eval()
    with torch.no_grad():
        features = model.forward_intermediates(torch.randn(1, 3, 224, 224), intermediates_only=True)
    assert [tuple(f.shape) for f in features] == [(1, 128, 14, 14), (1, 144, 7, 7), (1, 192, 4, 4)]


@pytest.mark.parametrize("img_size", [256, 320, (240, 320)])
def test_checkpoint_at_other_img_size_resamples_only_changed_windows(img_size, tmp_path) -> None:
    spec = load_fixture("official/EfficientViT_M0.json")
    path = write_checkpoint(spec, tmp_path)
    at_224 = litevit.create_model("efficientvit_m0", checkpoint=path).state_dict()
    model = litevit.create_model("efficientvit_m0", img_size=img_size, checkpoint=path)
    tables = {k: v for k, v in model.state_dict().items() if k.endswith("attention_biases")}
    assert tables
    for key, table in tables.items():
        window = tuple(table.shape[1:])
        source = at_224[key]
        if window == tuple(source.shape[1:]):
            assert torch.equal(table, source), f"{key} changed although its window did not"
        else:
            assert key.startswith("stages.2."), key
            torch.testing.assert_close(table, resample_table(source, window), atol=0, rtol=0)
    with torch.no_grad():
        height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
        assert torch.isfinite(model.eval()(torch.randn(1, 3, height, width))).all()


@pytest.mark.parametrize("size", [(176, 240), (96, 96)])
def test_fuse_exact_when_windows_shrink_or_pad(size: tuple[int, int]) -> None:
    """The fused bias (precomputed for the full window) serves sub-windows and padded maps exactly."""
    model = litevit.create_model("efficientvit_m0").double()
    randomise_for_fuse_test(model)
    model.eval()
    fused = litevit.fuse(model)
    assert not [n for n, _ in fused.named_parameters() if "attention_biases" in n]
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-9, rtol=1e-9)


def test_loading_weights_in_eval_mode_and_moving_dtype_stay_correct() -> None:
    a, b = litevit.create_model("efficientvit_m0"), litevit.create_model("efficientvit_m0")
    randomise_for_fuse_test(a, seed=0)
    randomise_for_fuse_test(b, seed=1)
    x = torch.randn(1, 3, 224, 224)
    a.eval()
    b.eval()
    with torch.no_grad():
        a(x)
        a.load_state_dict(b.state_dict())
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
        torch.testing.assert_close(a.double()(x.double()), b.double()(x.double()), atol=0, rtol=0)


def test_bad_inputs_raise_clear_errors() -> None:
    model = litevit.create_model("efficientvit_m0").eval()
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 3, H, W\)"):
        model(torch.randn(1, 224, 224, 3))
    with pytest.raises(ValueError, match=r"expects images of shape"):
        model(torch.randn(3, 224, 224))


def test_checkpoint_of_another_variant_is_named(tmp_path) -> None:
    spec = load_fixture("timm/efficientvit_m1.json")
    with pytest.raises(CheckpointError, match="efficientvit_m1"):
        litevit.create_model("efficientvit_m0", checkpoint=write_checkpoint(spec, tmp_path))


def test_new_head_keeps_backbone(tmp_path) -> None:
    spec = load_fixture("timm/efficientvit_m0.json")
    model = litevit.create_model("efficientvit_m0", num_classes=10, checkpoint=write_checkpoint(spec, tmp_path))
    assert model.head.linear.out_features == 10
    reference = litevit.create_model("efficientvit_m0", checkpoint=write_checkpoint(spec, tmp_path))
    torch.testing.assert_close(model.stem[0].conv.weight, reference.stem[0].conv.weight, atol=0, rtol=0)


def test_paper_records() -> None:
    names = litevit.list_models("efficientvit_m*")
    assert names == [f"efficientvit_m{i}" for i in range(6)]
    for name in names:
        paper = litevit.get_variant(name).paper
        assert paper.img_size == 224 and paper.top1 is not None
        assert any("V100" in hardware for hardware in paper.throughput)


@pytest.mark.parametrize("window", [(7, 7), (4, 5)])
def test_fused_heads_attend_tokens_first_and_equal_the_unfused_heads(window: tuple[int, int]) -> None:
    """The fused attention takes the tokens-first path (one attention op per head) and gives every head's output
    as the unfused channels-first path does, for the full window and a sub-window of its bias table."""
    attn = _random_attention()
    fused = attn.fuse()
    assert fused.tokens_first and not attn.tokens_first
    x = torch.randn(2, 64, *window, dtype=torch.float64)
    with torch.no_grad():
        for got, expected in zip(fused.heads(x), attn.heads(x), strict=True):
            torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", litevit.list_models("efficientvit_m*"))
def test_every_variant_fuses_to_the_tokens_first_attention(name: str) -> None:
    """Every variant's fused form uses the tokens-first attention and computes the unfused model (float64)."""
    model = litevit.create_model(name).double()
    randomise_for_fuse_test(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, CascadedGroupAttention):
                m.attention_biases.normal_()
    model.eval()
    fused = litevit.fuse(model)
    attentions = [m for m in fused.modules() if isinstance(m, CascadedGroupAttention)]
    assert attentions and all(m.tokens_first for m in attentions)
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-9, rtol=1e-9)
