"""The model API timm users reach for, on every family: get_classifier, set_grad_checkpointing, group_matcher with
layer-wise lr decay, in_chans other than 3 from RGB weights, set_input_size."""

from __future__ import annotations

import argparse
import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.nn.modules.batchnorm import _BatchNorm

import litevit
from litevit.layers import CheckpointSequential
from litevit.training.optim import WarmupCosine, layer_ids, param_groups
from litevit.training.options import add_arguments, config_from_args
from litevit.weights.reading import CheckpointError

# one variant per family and MobileViT version, at a small input size so that every test stays fast
MODELS = {
    "levit_128s": 128,
    "efficientvit_m0": 128,
    "mobilevit_xxs": 128,
    "mobilevitv2_050": 128,
    "mobilevitv3_xxs": 128,
    "t2t_vit_7": 128,
}
NAMES = list(MODELS)


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affines, random bias tables and heads: nothing left at its initial value
    that would hide a wrong resampling, a dropped head or a frozen BatchNorm."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        for name, p in model.named_parameters():
            if "attention_biases" in name or not p.any():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return model


def build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    kwargs.setdefault("img_size", MODELS[name])
    return randomised(litevit.create_model(name, **kwargs))


def images(name: str, batch: int = 2, channels: int = 3, size: int | None = None) -> torch.Tensor:
    side = size or MODELS[name]
    return torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------------- get_classifier


@pytest.mark.parametrize("name", NAMES)
def test_get_classifier_is_the_head(name: str) -> None:
    model = build(name)
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)
    # the classifier's parameters are exactly those under the model's head prefixes
    prefixes = tuple(model.head_prefixes)
    expected = {id(p) for n, p in model.named_parameters() if n.startswith(prefixes)}
    assert {id(p) for head in heads for p in head.parameters()} == expected
    assert len(heads) == (2 if name.startswith("levit") else 1)  # LeViT: class and distillation heads, as timm's
    model.reset_classifier(5)
    after = model.get_classifier()
    for head in after if isinstance(after, tuple) else (after,):
        assert [m for m in head.modules() if isinstance(m, nn.Linear)][-1].out_features == 5
    assert model(images(name)).shape == (2, 5)


# -------------------------------------------------------------------------------------------- set_grad_checkpointing


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, dict[str, torch.Tensor]]:
    """Bytes of tensors autograd keeps for backward, and the gradients of one step."""
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    torch.manual_seed(3)  # the same drop-path masks for both runs
    with saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return saved[0], {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_same_gradients_fewer_saved_activations(name: str) -> None:
    plain = build(name, drop_path=0.1, img_size=64).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    assert any(isinstance(m, CheckpointSequential) for m in checkpointed.modules())
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    x, y = images(name, size=64), torch.tensor([1, 2])
    saved_plain, grads_plain = _train_step(plain, x, y)
    saved_ckpt, grads_ckpt = _train_step(checkpointed, x, y)
    assert grads_ckpt.keys() == grads_plain.keys()
    for key, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[key], grad, rtol=1e-5, atol=1e-7, msg=key)
    # the blocks' inner activations are recomputed in backward, not kept
    assert saved_ckpt < 0.6 * saved_plain, (saved_ckpt, saved_plain)
    # the recomputation does not move BatchNorm's running statistics a second time
    for (key, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=key)
    checkpointed.set_grad_checkpointing(False)
    assert not any(isinstance(m, CheckpointSequential) for m in checkpointed.modules())
    with torch.no_grad():
        torch.testing.assert_close(checkpointed.eval()(x), plain.eval()(x), rtol=0, atol=0)


# ------------------------------------------------------------------------------------ group_matcher and layer decay


@pytest.mark.parametrize("name", NAMES)
def test_group_matcher_layers(name: str) -> None:
    model = build(name)
    matcher = model.group_matcher(coarse=False)
    assert set(matcher) == {"stem", "blocks"}
    layers = layer_ids(model)
    top = max(layers.values())
    prefixes = tuple(model.head_prefixes)
    for param_name, layer in layers.items():
        if param_name.startswith(prefixes):
            assert layer == top, param_name  # the head last
    first = next(iter(layers))
    assert layers[first] == 0  # the stem (or T2T's class token) first
    # layers never go down along the network's parameter order (stem, blocks in order, final norm, head)
    order = [layers[n] for n, _ in model.named_parameters() if not n.startswith(("cls_token", "pos_embed"))]
    assert order == sorted(order)
    assert sorted(set(layers.values())) == list(range(top + 1))
    coarse = model.group_matcher(coarse=True)
    assert coarse["stem"] == matcher["stem"]


@pytest.mark.parametrize("name", NAMES)
def test_layer_decay_scales_match_timm(name: str) -> None:
    timm_optim = pytest.importorskip("timm.optim")
    model = build(name)
    groups = param_groups(model, 0.05, layer_decay=0.75)
    top = max(layer_ids(model).values())
    for group in groups:
        assert group["lr_scale"] == pytest.approx(0.75 ** (top - group["layer"]))
    ours = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    reference = timm_optim.param_groups_layer_decay(
        model, 0.05, no_weight_decay_list=model.no_weight_decay(), layer_decay=0.75
    )
    theirs = {id(p): (g["lr_scale"], g["weight_decay"]) for g in reference for p in g["params"]}
    assert ours.keys() == theirs.keys()
    for key, (scale, decay) in theirs.items():
        assert ours[key][0] == pytest.approx(scale)
        assert ours[key][1] == decay


def test_layer_decay_reaches_the_optimizer_and_the_command_line() -> None:
    model = build("levit_128s")
    optimizer = torch.optim.AdamW(param_groups(model, 0.05, layer_decay=0.5), lr=1e-3)
    schedule = WarmupCosine(optimizer, 1e-3, epochs=10)
    lr = schedule.step_to(2.0)
    top = max(layer_ids(model).values())
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(lr * 0.5 ** (top - group["layer"]))
    stem = [g for g in optimizer.param_groups if g["layer"] == 0]
    assert stem and all(g["lr"] == pytest.approx(lr * 0.5**top) for g in stem)
    plain = param_groups(model, 0.05)
    assert len(plain) == 2 and all("lr_scale" not in g for g in plain)
    with pytest.raises(ValueError, match="layer_decay must be in"):
        param_groups(model, 0.05, layer_decay=1.5)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["levit_128s", "--data", "d", "--layer-decay", "0.75"]))
    assert config.layer_decay == 0.75


# -------------------------------------------------------------------------------------------- in_chans from RGB


def _first_layer_keys(name: str) -> tuple[str, ...]:
    if name.startswith("t2t"):
        return ("tokens_to_token.attention1.kqv.weight",)
    return ("stem.0.conv.weight",)


def _expected_rule(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """timm's adapt_input_conv, written out channel by channel."""
    if in_chans == 1:
        return weight[:, 0:1] + weight[:, 1:2] + weight[:, 2:3]
    return torch.stack([weight[:, c % 3] for c in range(in_chans)], dim=1) * (3 / in_chans)


@pytest.mark.parametrize("in_chans", [1, 4])
@pytest.mark.parametrize("name", NAMES)
def test_in_chans_adapts_rgb_weights(name: str, in_chans: int, caplog: pytest.LogCaptureFixture) -> None:
    rgb = build(name).eval()
    state = rgb.state_dict()
    with caplog.at_level(logging.WARNING, logger="litevit"):
        model = litevit.create_model(name, checkpoint=state, in_chans=in_chans, img_size=MODELS[name]).eval()
    assert f"in_chans={in_chans}" in caplog.text
    loaded = model.state_dict()
    for key in _first_layer_keys(name):
        weight = state[key]
        if weight.ndim == 2:  # T2T: a linear map over unfolded 7x7 patches, channel-major
            expected = _expected_rule(weight.view(weight.shape[0], 3, -1), in_chans).flatten(1)
        else:
            expected = _expected_rule(weight, in_chans)
        torch.testing.assert_close(loaded[key], expected)
    changed = sorted(k for k in state if not torch.equal(loaded[k], state[k]) if loaded[k].shape == state[k].shape)
    assert changed == []  # everything else loads as it was
    gray = images(name, channels=1)
    with torch.no_grad():
        out = model(gray.repeat(1, in_chans, 1, 1))
        assert out.shape == (2, 1000) and torch.isfinite(out).all()
        if in_chans == 1 and not name.startswith("t2t"):
            # a sum over RGB is exact for a grey image: the RGB model on the same image repeated three times
            torch.testing.assert_close(out, rgb(gray.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)


def test_t2t_in_chans_layernorm_affine() -> None:
    rgb = build("t2t_vit_7")
    state = rgb.state_dict()
    key = "tokens_to_token.attention1.norm1.weight"
    gray = litevit.create_model("t2t_vit_7", checkpoint=state, in_chans=1, img_size=128)
    four = litevit.create_model("t2t_vit_7", checkpoint=state, in_chans=4, img_size=128)
    per_channel = state[key].view(3, 49)
    torch.testing.assert_close(gray.state_dict()[key], (per_channel[0] + per_channel[1] + per_channel[2]) / 3)
    torch.testing.assert_close(four.state_dict()[key], torch.cat([per_channel[c % 3] for c in range(4)]))


def test_in_chans_needs_rgb_weights() -> None:
    state = build("levit_128s", in_chans=1).state_dict()
    with pytest.raises(CheckpointError, match="only RGB"):
        litevit.create_model("levit_128s", checkpoint=state, in_chans=4)


# ----------------------------------------------------------------------------------------------------- set_input_size


@pytest.mark.parametrize("name", NAMES)
def test_set_input_size_equals_loading_at_that_size(name: str) -> None:
    old, new = MODELS[name], MODELS[name] + 64
    model = build(name).eval()
    state = copy.deepcopy(model.state_dict())
    reference = litevit.create_model(name, img_size=new, checkpoint=state).eval()
    model.set_input_size(new)
    assert model.config.img_size == new and model.model_info.img_size == new
    assert model.model_info.data.img_size == new
    x = images(name, size=new)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    assert model.state_dict().keys() == reference.state_dict().keys()
    model.set_input_size(old)  # and back: the tables keep the shapes of a model built at the old size
    fresh = litevit.create_model(name, img_size=old)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}


@pytest.mark.parametrize("name", ["levit_128s", "efficientvit_m0"])
def test_set_input_size_refuses_a_fused_model(name: str) -> None:
    fused = litevit.fuse(build(name))
    with pytest.raises(ValueError, match="before fusing"):
        fused.set_input_size(MODELS[name] + 64)
