"""MobileViT v1/v2/v3 checkpoint layouts.

``official``: apple/ml-cvnets (v1 ``mobilevit``, v2 ``mobilevit_v2``) and micronDLA/MobileViTv3 (``mobilevit_v3``,
built on those two), plain state dicts. ``timm``: timm's ``mobilevit_*`` / ``mobilevitv2_*`` (ByobNet).
Both index stages and blocks as litevit does (``layer_{i}.{j}`` = ``stages.{i-1}.{j}``), so only names change.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

LAYOUTS = ("official", "timm")

_BN = {"norm": "bn", "conv": "conv", "bn": "bn"}
_MV2 = {"exp_1x1": "expand", "conv_3x3": "dw", "red_1x1": "project"}
_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _stage(m: re.Match[str]) -> str:
    return f"stages.{int(m['i']) - 1}.{m['j']}"


_OFFICIAL: list[_Rule] = [
    (re.compile(r"^conv_1\.block\.(?P<t>conv|norm)\.(?P<r>.+)$"), lambda m: f"stem.0.{_BN[m['t']]}.{m['r']}"),
    (
        re.compile(
            r"^layer_(?P<i>\d)\.(?P<j>\d+)\.block\.(?P<c>exp_1x1|conv_3x3|red_1x1)\.block\.(?P<t>conv|norm)\.(?P<r>.+)$"
        ),
        lambda m: f"{_stage(m)}.{_MV2[m['c']]}.0.{_BN[m['t']]}.{m['r']}",
    ),
    (
        re.compile(r"^layer_(?P<i>\d)\.(?P<j>\d+)\.local_rep\.(?:conv_3x3|0)\.block\.(?P<t>conv|norm)\.(?P<r>.+)$"),
        lambda m: f"{_stage(m)}.local_conv.0.{_BN[m['t']]}.{m['r']}",
    ),
    (
        re.compile(r"^layer_(?P<i>\d)\.(?P<j>\d+)\.local_rep\.(?:conv_1x1|1)\.block\.conv\.weight$"),
        lambda m: f"{_stage(m)}.local_proj.weight",
    ),
    (
        re.compile(
            r"^layer_(?P<i>\d)\.(?P<j>\d+)\.global_rep\.(?P<k>\d+)\.pre_norm_(?:mha|attn)\.1\."
            r"(?P<p>qkv_proj|out_proj)(?:\.block\.conv)?\.(?P<r>weight|bias)$"
        ),
        lambda m: f"{_stage(m)}.transformer.{m['k']}.attn.{'qkv' if m['p'] == 'qkv_proj' else 'proj'}.{m['r']}",
    ),
    (
        re.compile(
            r"^layer_(?P<i>\d)\.(?P<j>\d+)\.global_rep\.(?P<k>\d+)\.pre_norm_(?P<n>mha|attn|ffn)\.0\.(?P<r>.+)$"
        ),
        lambda m: f"{_stage(m)}.transformer.{m['k']}.{'norm2' if m['n'] == 'ffn' else 'norm1'}.{m['r']}",
    ),
    (
        re.compile(
            r"^layer_(?P<i>\d)\.(?P<j>\d+)\.global_rep\.(?P<k>\d+)\.pre_norm_ffn\.(?P<f>1|3|4)(?:\.block\.conv)?\."
            r"(?P<r>weight|bias)$"
        ),
        lambda m: f"{_stage(m)}.transformer.{m['k']}.mlp.{'fc1' if m['f'] == '1' else 'fc2'}.{m['r']}",
    ),
    (
        re.compile(r"^layer_(?P<i>\d)\.(?P<j>\d+)\.global_rep\.\d+\.(?P<r>weight|bias)$"),
        lambda m: f"{_stage(m)}.norm.{m['r']}",
    ),
    (
        re.compile(r"^layer_(?P<i>\d)\.(?P<j>\d+)\.(?P<c>conv_proj|fusion)\.block\.(?P<t>conv|norm)\.(?P<r>.+)$"),
        lambda m: f"{_stage(m)}.{m['c']}.0.{_BN[m['t']]}.{m['r']}",
    ),
    (
        re.compile(r"^conv_1x1_exp\.block\.(?P<t>conv|norm)\.(?P<r>.+)$"),
        lambda m: f"final_conv.0.{_BN[m['t']]}.{m['r']}",
    ),
    (re.compile(r"^classifier\.(?:fc|1)\.(?P<r>weight|bias)$"), lambda m: f"head.{m['r']}"),
]

_TIMM_CONV = {"conv1_1x1": "expand", "conv2_kxk": "dw", "conv3_1x1": "project", "conv_kxk": "local_conv"}
_TIMM: list[_Rule] = [
    (re.compile(r"^stem\.(?P<t>conv|bn)\.(?P<r>.+)$"), lambda m: f"stem.0.{m['t']}.{m['r']}"),
    (
        re.compile(
            r"^(?P<s>stages\.\d\.\d+)\.(?P<c>conv1_1x1|conv2_kxk|conv3_1x1|conv_kxk)\.(?P<t>conv|bn)\.(?P<r>.+)$"
        ),
        lambda m: f"{m['s']}.{_TIMM_CONV[m['c']]}.0.{m['t']}.{m['r']}",
    ),
    (re.compile(r"^(?P<s>stages\.\d\.\d+)\.conv_1x1\.weight$"), lambda m: f"{m['s']}.local_proj.weight"),
    (
        re.compile(r"^(?P<s>stages\.\d\.\d+\.transformer\.\d+)\.attn\.(?P<p>qkv|qkv_proj|proj|out_proj)\.(?P<r>.+)$"),
        lambda m: f"{m['s']}.attn.{'qkv' if m['p'].startswith('qkv') else 'proj'}.{m['r']}",
    ),
    (
        re.compile(r"^(?P<s>stages\.\d\.\d+\.transformer\.\d+\.(?:norm1|norm2|mlp\.fc1|mlp\.fc2)\..+)$"),
        lambda m: m["s"],
    ),
    (re.compile(r"^(?P<s>stages\.\d\.\d+)\.norm\.(?P<r>.+)$"), lambda m: f"{m['s']}.norm.{m['r']}"),
    (
        re.compile(r"^(?P<s>stages\.\d\.\d+)\.(?P<c>conv_proj|conv_fusion)\.(?P<t>conv|bn)\.(?P<r>.+)$"),
        lambda m: f"{m['s']}.{'fusion' if m['c'] == 'conv_fusion' else 'conv_proj'}.0.{m['t']}.{m['r']}",
    ),
    (re.compile(r"^final_conv\.(?P<t>conv|bn)\.(?P<r>.+)$"), lambda m: f"final_conv.0.{m['t']}.{m['r']}"),
    (re.compile(r"^head\.fc\.(?P<r>weight|bias)$"), lambda m: f"head.{m['r']}"),
]


def detect(state: dict[str, torch.Tensor]) -> str | None:
    if "conv_1.block.conv.weight" in state:
        return "official"
    if "stem.conv.weight" in state:
        return "timm"
    return None


def _rename(key: str, rules: list[_Rule]) -> str:
    for pattern, rename in rules:
        if m := pattern.match(key):
            return rename(m)
    return key  # unknown: kept, so that loading lists it among the unexpected keys


def to_litevit(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    rules = _OFFICIAL if layout == "official" else _TIMM
    return {_rename(key, rules): value for key, value in state.items()}
