"""litevit models in timm's key layout and ``config.json`` fields, for the families timm also implements.

timm builds LeViT (``levit_*``), EfficientViT-MSRA (``efficientvit_m0..m5``) and MobileViT v1 and v2
(``mobilevit_*``, ``mobilevitv2_*``) under the same names as litevit. The families' converters
(``models/*_convert.py``) read timm's keys; :func:`to_timm` writes them, and is their inverse (the tests check
``to_litevit(to_timm(state)) == state`` and that timm loads the result with equal logits).

MobileViTv3 and T2T-ViT have no timm implementation, nor has a model whose config differs from its registered
variant in anything but ``num_classes``, ``img_size``, ``in_chans`` and the training-only drop rates (a LeViT
without distillation head, other widths, ...): :func:`timm_architecture` returns None for them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..layers import to_2tuple
from ..registry import DataConfig, get_variant

_FREE_FIELDS = {"num_classes", "img_size", "in_chans", "drop_path", "drop_rate"}  # timm takes them as arguments

# family -> (timm's first convolution, timm's classifier(s), whether timm fixes the input size)
_TIMM_CFG: dict[str, tuple[str, str | list[str], bool]] = {
    "levit": ("stem.conv1.linear", ["head.linear", "head_dist.linear"], True),
    "efficientvit_msra": ("patch_embed.conv1.conv", "head.linear", True),
    "mobilevit": ("stem.conv", "head.fc", False),
}
_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _levit_stem(m: re.Match[str]) -> str:
    return f"stem.conv{int(m[1]) // 2 + 1}.{'linear' if m[2] == 'conv' else 'bn'}.{m[3]}"


_LEVIT: list[_Rule] = [
    (re.compile(r"^stem\.(\d)\.(conv|bn)\.(.*)$"), _levit_stem),
    (
        re.compile(r"^(stages\.\d+\.downsample)\.attn\.(q|proj)\.(.*)$"),
        lambda m: f"{m[1]}.attn_downsample.{m[2]}.ln.{m[3]}",
    ),
    (re.compile(r"^(stages\.\d+\.downsample)\.attn\.(.*)$"), lambda m: f"{m[1]}.attn_downsample.{m[2]}"),
    (re.compile(r"^(stages\.\d+\.downsample)\.mlp\.m\.fc(\d)\.(.*)$"), lambda m: f"{m[1]}.mlp.ln{m[2]}.{m[3]}"),
    (re.compile(r"^(stages\.\d+\.blocks\.\d+)\.attn\.m\.proj\.(.*)$"), lambda m: f"{m[1]}.attn.proj.ln.{m[2]}"),
    (re.compile(r"^(stages\.\d+\.blocks\.\d+)\.attn\.m\.(.*)$"), lambda m: f"{m[1]}.attn.{m[2]}"),
    (re.compile(r"^(stages\.\d+\.blocks\.\d+)\.mlp\.m\.fc(\d)\.(.*)$"), lambda m: f"{m[1]}.mlp.ln{m[2]}.{m[3]}"),
]

_EFFICIENTVIT_SUBSAMPLE = {"pre.dw": "res1.0", "pre.ffn": "res1.1", "post.dw": "res2.0", "post.ffn": "res2.1"}
_EFFICIENTVIT: list[_Rule] = [
    (re.compile(r"^stem\.(\d)\.(.*)$"), lambda m: f"patch_embed.conv{int(m[1]) // 2 + 1}.{m[2]}"),
    (
        re.compile(r"^(stages\.\d+\.downsample)\.(pre|post)\.(dw|ffn)\.(.*)$"),
        lambda m: f"{m[1]}.{_EFFICIENTVIT_SUBSAMPLE[f'{m[2]}.{m[3]}']}.{m[4]}",
    ),
    (re.compile(r"^(stages\.\d+\.downsample)\.merge\.(.*)$"), lambda m: f"{m[1]}.patchmerge.{m[2]}"),
    (
        re.compile(r"^(stages\.\d+\.blocks\.\d+\.mixer\.m\.attn)\.proj\.(.*)$"),
        lambda m: f"{m[1]}.proj.1.{m[2]}",  # timm's projection is Sequential(ReLU, ConvNorm)
    ),
]

_MOBILEVIT_CONV = {"expand": "conv1_1x1", "dw": "conv2_kxk", "project": "conv3_1x1", "local_conv": "conv_kxk"}


def _mobilevit_rules(separable: bool) -> list[_Rule]:
    qkv, proj = ("qkv_proj", "out_proj") if separable else ("qkv", "proj")  # timm's v2 / v1 attention names
    return [
        (re.compile(r"^stem\.0\.(conv|bn)\.(.*)$"), lambda m: f"stem.{m[1]}.{m[2]}"),
        (
            re.compile(r"^(stages\.\d\.\d+)\.(expand|dw|project|local_conv)\.0\.(conv|bn)\.(.*)$"),
            lambda m: f"{m[1]}.{_MOBILEVIT_CONV[m[2]]}.{m[3]}.{m[4]}",
        ),
        (re.compile(r"^(stages\.\d\.\d+)\.local_proj\.weight$"), lambda m: f"{m[1]}.conv_1x1.weight"),
        (
            re.compile(r"^(stages\.\d\.\d+\.transformer\.\d+\.attn)\.(qkv|proj)\.(.*)$"),
            lambda m: f"{m[1]}.{qkv if m[2] == 'qkv' else proj}.{m[3]}",
        ),
        (
            re.compile(r"^(stages\.\d\.\d+)\.(conv_proj|fusion)\.0\.(conv|bn)\.(.*)$"),
            lambda m: f"{m[1]}.{'conv_fusion' if m[2] == 'fusion' else 'conv_proj'}.{m[3]}.{m[4]}",
        ),
        (re.compile(r"^final_conv\.0\.(conv|bn)\.(.*)$"), lambda m: f"final_conv.{m[1]}.{m[2]}"),
        (re.compile(r"^head\.(weight|bias)$"), lambda m: f"head.fc.{m[1]}"),
    ]


def _rename(key: str, rules: list[_Rule]) -> str:
    for pattern, rename in rules:
        if m := pattern.match(key):
            return rename(m)
    return key  # the same name in both layouts (heads, norms, block internals)


def timm_architecture(model: nn.Module) -> str | None:
    """timm's name for the network ``model`` is, when timm builds the same one from that name and its arguments."""
    variant = get_variant(model.variant_name)
    if variant.family not in _TIMM_CFG or variant.name not in variant.external_names:
        return None  # MobileViTv3 is registered without timm's names
    fields = [f.name for f in dataclasses.fields(variant.config) if f.name not in _FREE_FIELDS]
    if any(getattr(model.config, name) != getattr(variant.config, name) for name in fields):
        return None
    height, width = to_2tuple(model.config.img_size)
    if variant.family == "efficientvit_msra" and height != width:
        return None  # timm's EfficientViT-MSRA derives its windows from a square image side
    return variant.name


def to_timm(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (litevit's keys for ``model``) in timm's key layout for :func:`timm_architecture`'s network."""
    family = get_variant(model.variant_name).family
    if family == "levit":
        rules = _LEVIT
    elif family == "efficientvit_msra":
        rules = _EFFICIENTVIT
    else:
        rules = _mobilevit_rules(model.config.attention == "separable")
    out = {}
    for key, value in state.items():
        if family == "efficientvit_msra" and key.endswith("attention_biases"):
            value = value.flatten(1)  # heads, window_h, window_w -> heads, window_h * window_w (timm's table)
        out[_rename(key, rules)] = value
    return out


def timm_config(model: nn.Module, data: DataConfig, class_names: tuple[str, ...] | None) -> dict[str, Any]:
    """The fields of timm's ``config.json`` (``save_for_hf``) that rebuild ``model`` in timm with its head."""
    architecture = timm_architecture(model)
    if architecture is None:
        raise ValueError(f"timm has no network equal to this {model.variant_name}")
    variant = get_variant(model.variant_name)
    first_conv, classifier, fixed = _TIMM_CFG[variant.family]
    config = model.config
    height, width = to_2tuple(config.img_size)
    model_args: dict[str, Any] = {}
    if config.in_chans != 3:
        model_args["in_chans"] = config.in_chans
    if fixed and config.img_size != variant.config.img_size:
        model_args["img_size"] = config.img_size if isinstance(config.img_size, int) else [height, width]
    pretrained_cfg = {
        "custom_load": False,
        "input_size": [config.in_chans, height, width],
        "fixed_input_size": fixed,
        "interpolation": data.interpolation,
        "crop_pct": data.crop_pct,
        "crop_mode": "center",
        "mean": list(data.mean),
        "std": list(data.std),
        "num_classes": config.num_classes,
        "pool_size": None,
        "first_conv": first_conv,
        "classifier": classifier,
    }
    out: dict[str, Any] = {
        "architecture": architecture,
        "num_classes": config.num_classes,
        "num_features": model.num_features,
        "global_pool": "avg",
    }
    if class_names is not None:
        out["label_names"] = list(class_names)
    if model_args:
        out["model_args"] = model_args
    out["pretrained_cfg"] = pretrained_cfg
    return out
