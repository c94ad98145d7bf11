"""LeViT: parity with the official and timm fixtures, resolution handling, heads, errors."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
import torch.nn.functional as F
from reference import assert_logits_match, fixture_files, load_fixture, recipe_state_dict
from safetensors.torch import save_file

import litevit
from litevit.models.levit import LeViTAttention
from litevit.weights.reading import CheckpointError

LEVIT_FIXTURES = fixture_files("official/LeViT_*.json") + fixture_files("timm/levit_*.json")


def official_bias_idxs(resolution: int, stride: int) -> torch.Tensor:
    """The attention-bias index table exactly as the official code enumerates it (first-seen offset order)."""
    res_out = (resolution - 1) // stride + 1
    keys = list(itertools.product(range(resolution), range(resolution)))
    queries = list(itertools.product(range(res_out), range(res_out)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for qy, qx in queries:
        for ky, kx in keys:
            offset = (abs(qy * stride - ky), abs(qx * stride - kx))
            idxs.append(offsets.setdefault(offset, len(offsets)))
    return torch.tensor(idxs).view(len(queries), len(keys))


def _non_generated(key: str, shape: list[int], dtype: str) -> torch.Tensor | None:
    if key.endswith("attention_bias_idxs"):
        n_queries, n_keys = shape
        resolution = int(n_keys**0.5)
        return official_bias_idxs(resolution, 1 if n_queries == n_keys else 2)
    return None


def write_checkpoint(spec: dict, tmp_path) -> str:
    """The fixture's weights saved the way each layout ships them."""
    state = recipe_state_dict(spec, _non_generated)
    if spec["layout"] == "official":
        path = tmp_path / "model.pth"
        torch.save({"model": state, "epoch": 999}, path)  # official checkpoints nest the weights under "model"
    elif spec["variant"].startswith("levit_conv"):
        path = tmp_path / "pytorch_model.bin"
        torch.save(state, path)
    else:
        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    return str(path)


@pytest.mark.parametrize("fixture", LEVIT_FIXTURES)
def test_fixture_parity(fixture: str, tmp_path) -> None:
    spec = load_fixture(fixture)
    variant = litevit.registry.find_variant(spec["variant"])
    assert variant is not None, f"no registered variant for {spec['variant']}"
    model = litevit.create_model(variant.name, checkpoint=write_checkpoint(spec, tmp_path))
    assert_logits_match(model, spec)


def test_fixture_set_is_complete() -> None:
    files = [f for f in LEVIT_FIXTURES if not f.startswith("<missing>")]
    if not files:
        pytest.skip("reference fixtures absent")
    assert len(files) == 15  # 5 official, 5 timm levit_*, 5 timm levit_conv_*


@pytest.mark.parametrize(("resolution", "stride"), [(14, 1), (7, 1), (4, 1), (14, 2), (7, 2)])
def test_bias_index_matches_official_enumeration(resolution: int, stride: int) -> None:
    attn = LeViTAttention(64, 64, 16, 2, 2.0, (resolution, resolution), stride=stride)
    assert torch.equal(attn.attention_bias_idxs, official_bias_idxs(resolution, stride))


def test_train_mode_returns_two_heads_only_when_distilled_training_eval_their_mean() -> None:
    model = litevit.create_model("levit_128s", num_classes=10)
    x = torch.randn(2, 3, 224, 224)
    model.train()
    out = model(x)  # a generic loop: one tensor, the mean of both heads, and both heads learn from it
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    assert model.head.linear.weight.grad is not None and model.head_dist.linear.weight.grad is not None
    model.set_distilled_training(True)
    cls, dist = model(x)
    assert cls.shape == dist.shape == (2, 10)
    torch.testing.assert_close((cls + dist) / 2, out)
    model.set_distilled_training(False)
    assert isinstance(model(x), torch.Tensor)
    model.eval()
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        expected = (model.head(features) + model.head_dist(features)) / 2
        torch.testing.assert_close(model(x), expected)


def test_without_distillation_head() -> None:
    model = litevit.create_model("levit_128s", distilled=False).train()
    out = model(torch.randn(2, 3, 224, 224))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1000)
    assert model.head_dist is None
    assert not any(k.startswith("head_dist.") for k in model.state_dict())


def _randomised(name: str, seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = litevit.create_model(name, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_loading_weights_in_eval_mode_does_not_use_stale_biases() -> None:
    x = torch.randn(1, 3, 224, 224)
    a, b = _randomised("levit_128s", 0), _randomised("levit_128s", 1)
    with torch.no_grad():
        a(x)  # any table gathered here must not survive the load below
        a.load_state_dict(b.state_dict())
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


def test_dtype_and_device_moves_keep_outputs_correct() -> None:
    model = _randomised("levit_128s", 0)
    fused = litevit.fuse(model)
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        fused(x.float())
        reference = model.double()(x)
        # the fused weights were folded in float32, hence float32-level agreement after widening
        torch.testing.assert_close(fused.double()(x), reference, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(fused.to("cpu", torch.float32)(x.float()), reference.float(), atol=1e-5, rtol=1e-4)


def test_fused_model_is_exact_in_float32() -> None:
    model = _randomised("levit_256", 0)
    fused = litevit.fuse(model)
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-5
    assert not any(isinstance(m, LeViTAttention) and m.fused_bias is None for m in fused.modules())


def test_other_resolution_resamples_bias_tables(tmp_path) -> None:
    source = _randomised("levit_256", 0)
    path = tmp_path / "levit_256.safetensors"
    save_file(source.state_dict(), str(path))
    model = litevit.create_model("levit_256", img_size=288, checkpoint=path).eval()
    assert model(torch.randn(1, 3, 288, 288)).shape == (1, 1000)
    # stage 1 of 224 has a 14x14 grid, at 288 an 18x18 one: the table is the bicubic resampling of the original
    key = "stages.0.blocks.0.attn.m.attention_biases"
    original = source.state_dict()[key].view(-1, 1, 14, 14).double()
    expected = F.interpolate(original, size=(18, 18), mode="bicubic", align_corners=False).view(-1, 18 * 18)
    torch.testing.assert_close(model.state_dict()[key], expected.float())
    # untouched where the grid did not change: same size loads exactly
    same = litevit.create_model("levit_256", checkpoint=path).eval()
    torch.testing.assert_close(same.state_dict()[key], source.state_dict()[key], atol=0, rtol=0)


def test_non_square_input_size(tmp_path) -> None:
    source = _randomised("levit_128s", 0)
    path = tmp_path / "levit_128s.pth"
    torch.save(source.state_dict(), path)
    model = litevit.create_model("levit_128s", img_size=(224, 320), checkpoint=path).eval()
    assert model.stages[0].blocks[0].attn.m.attention_biases.shape == (4, 14 * 20)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 320)).shape == (2, 1000)
        features = model.forward_intermediates(torch.randn(1, 3, 224, 320), intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in features] == [(14, 20), (7, 10), (4, 5)]


def test_wrong_input_size_and_channels_are_clear_errors() -> None:
    model = litevit.create_model("levit_128s").eval()
    with pytest.raises(ValueError, match=r"built for 224x224 inputs .*got 256x256.*img_size"):
        model(torch.randn(1, 3, 256, 256))
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 3, H, W\); got \(1, 1, 224, 224\)"):
        model(torch.randn(1, 1, 224, 224))
    assert model(torch.randn(1, 3, 210, 220)).shape == (1, 1000)  # same 14x14 token grid


def test_wrong_variant_checkpoint_names_the_right_one(tmp_path) -> None:
    path = tmp_path / "levit_192.pth"
    torch.save(litevit.create_model("levit_192").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"looks like levit_192 \(litevit layout\)") as info:
        litevit.create_model("levit_256", checkpoint=path)
    assert "shape mismatch" in str(info.value)


def test_missing_and_unexpected_keys_are_listed(tmp_path) -> None:
    state = litevit.create_model("levit_128s").state_dict()
    del state["stem.0.conv.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): stem\.0\.conv\.weight") as info:
        litevit.create_model("levit_128s", checkpoint=state)
    assert "unexpected keys (1): extra.weight" in str(info.value)


def test_other_num_classes_keeps_fresh_head(caplog, tmp_path) -> None:
    source = _randomised("levit_128s", 0)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": source.state_dict()}, path)
    with caplog.at_level(logging.INFO, logger="litevit"):
        model = litevit.create_model("levit_128s", num_classes=7, checkpoint=path)
    assert "fresh, untrained head" in caplog.text
    assert model.head.linear.out_features == 7 and model.head_dist.linear.out_features == 7
    torch.testing.assert_close(model.stem[0].conv.weight, source.stem[0].conv.weight, atol=0, rtol=0)
