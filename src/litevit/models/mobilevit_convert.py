"""MobileViT v1/v2/v3 checkpoint layouts.

``official``: apple/ml-cvnets (v1 ``mobilevit``, v2 ``mobilevit_v2``) and micronDLA/MobileViTv3 (``mobilevit_v3``,
built on those two), plain state dicts. ``timm``: timm's ``mobilevit_*`` / ``mobilevitv2_*`` (ByobNet).
Both index stages and blocks as litevit does (``layer_{i}.{j}`` = ``stages.{i-1}.{j}``), so only names change.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from .key_table import KeyTable

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


def timm_table(separable: bool) -> KeyTable:
    """timm's keys against litevit's (both directions: models/key_table.py) for MobileViT v2 (``separable``
    attention: timm's ``qkv_proj``/``out_proj``) or v1 (``qkv``/``proj``)."""
    qkv, proj = ("qkv_proj", "out_proj") if separable else ("qkv", "proj")
    block, layer = "stages.{s}.{j}", "stages.{s}.{j}.transformer.{k}"
    return KeyTable(
        "timm",
        (
            ("stem.{t}.{rest}", "stem.0.{t}.{rest}"),
            *((f"{block}.{theirs}.{{rest}}", f"{block}.{ours}.0.{{rest}}") for theirs, ours in _TIMM_CONV.items()),
            (f"{block}.conv_1x1.weight", f"{block}.local_proj.weight"),
            (f"{layer}.attn.{qkv}.{{rest}}", f"{layer}.attn.qkv.{{rest}}"),
            (f"{layer}.attn.{proj}.{{rest}}", f"{layer}.attn.proj.{{rest}}"),
            *((f"{layer}.{part}.{{rest}}", f"{layer}.{part}.{{rest}}") for part in ("norm1", "norm2", "mlp")),
            (f"{block}.norm.{{rest}}", f"{block}.norm.{{rest}}"),
            (f"{block}.conv_proj.{{rest}}", f"{block}.conv_proj.0.{{rest}}"),
            (f"{block}.conv_fusion.{{rest}}", f"{block}.fusion.0.{{rest}}"),
            ("final_conv.{rest}", "final_conv.0.{rest}"),
            ("head.fc.{rest}", "head.{rest}"),
        ),
    )


TIMM_V1, TIMM_V2 = timm_table(separable=False), timm_table(separable=True)


def detect(state: dict[str, torch.Tensor]) -> str | None:
    if "conv_1.block.conv.weight" in state:
        return "official"
    if "stem.conv.weight" in state:
        return "timm"
    return None


def _official_key(key: str) -> str:
    for pattern, rename in _OFFICIAL:
        if m := pattern.match(key):
            return rename(m)
    return key  # unknown: kept, so that loading lists it among the unexpected keys


def to_litevit(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    if layout == "official":
        return {_official_key(key): value for key, value in state.items()}
    table = TIMM_V2 if any(".attn.qkv_proj." in key for key in state) else TIMM_V1
    return table.read(state)


def from_litevit(state: dict[str, torch.Tensor], layout: str, config: Any) -> dict[str, torch.Tensor]:
    """``state`` (litevit's keys) in timm's ``mobilevit_*`` (v1) or ``mobilevitv2_*`` layout."""
    return (TIMM_V2 if config.attention == "separable" else TIMM_V1).write(state, layout)
