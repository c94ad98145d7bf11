"""MobileViT v1/v2/v3 checkpoint layouts.

``official``: apple/ml-cvnets (v1 ``mobilevit``, v2 ``mobilevit_v2``) and micronDLA/MobileViTv3 (``mobilevit_v3``,
built on those two), plain state dicts. ``timm``: timm's ``mobilevit_*`` / ``mobilevitv2_*`` (ByobNet).
Both index stages and blocks as litevit does (``layer_{i}.{j}`` = ``stages.{i-1}.{j}``), so only names change.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .key_table import KeyTable

LAYOUTS = ("official", "timm")

_CONV_BN = (("conv", "conv"), ("norm", "bn"))  # cvnets' ConvLayer: block.conv, block.norm
_MV2 = {"exp_1x1": "expand", "conv_3x3": "dw", "red_1x1": "project"}  # cvnets' InvertedResidual parts


@dataclass(frozen=True)
class _Cvnets:
    """The names cvnets gives the parts of a MobileViT block that differ between its attentions."""

    attention: str  # the pre-norm attention entry of a transformer layer
    local_conv: str  # local_rep's k x k ConvLayer
    local_proj: str  # local_rep's 1x1 ConvLayer (no norm)
    linear: str  # what holds a transformer linear's weights: nn.Linear ("") or a 1x1 ConvLayer
    fc2: str  # the FFN's second linear, after its activation and dropout(s)
    head: str  # the classifier's linear


# v1 (and MobileViTv3 on v1): multi-head attention, nn.Linear; v2 (and v3 on v2): separable attention, 1x1 convs
_CVNETS = {
    "mhsa": _Cvnets("pre_norm_mha", "conv_3x3", "conv_1x1", "", "4", "classifier.fc"),
    "separable": _Cvnets("pre_norm_attn", "0", "1", ".block.conv", "3", "classifier.1"),
}


def official_table(attention: str, transformer_depths: Sequence[int]) -> KeyTable:
    """The official (cvnets) keys against litevit's (both directions: models/key_table.py) for a MobileViT of
    ``attention`` whose MobileViT blocks in ``layer_3..5`` hold ``transformer_depths`` layers each (the index of each
    block's final norm: :func:`_depths_of_state` reads them from a checkpoint)."""
    names = _CVNETS[attention]
    rows: list[tuple[str, str | None]] = [
        *((f"conv_1.block.{theirs}.{{rest}}", f"stem.0.{ours}.{{rest}}") for theirs, ours in _CONV_BN),
    ]
    for i in range(1, 6):  # cvnets' layer_i is litevit's stages.{i - 1}; block j is block j in both
        block, stage = f"layer_{i}.{{j}}", f"stages.{i - 1}.{{j}}"
        for (part, mine), (theirs, ours) in itertools.product(_MV2.items(), _CONV_BN):
            rows.append((f"{block}.block.{part}.block.{theirs}.{{rest}}", f"{stage}.{mine}.0.{ours}.{{rest}}"))
        if i < 3:
            continue
        layer, mine = f"{block}.global_rep.{{k}}", f"{stage}.transformer.{{k}}"
        lin = names.linear
        rows += [
            *((f"{block}.local_rep.{names.local_conv}.block.{t}.{{rest}}", f"{stage}.local_conv.0.{o}.{{rest}}")
              for t, o in _CONV_BN),
            (f"{block}.local_rep.{names.local_proj}.block.conv.weight", f"{stage}.local_proj.weight"),
            (f"{layer}.{names.attention}.0.{{p}}", f"{mine}.norm1.{{p}}"),
            (f"{layer}.{names.attention}.1.qkv_proj{lin}.{{p}}", f"{mine}.attn.qkv.{{p}}"),
            (f"{layer}.{names.attention}.1.out_proj{lin}.{{p}}", f"{mine}.attn.proj.{{p}}"),
            (f"{layer}.pre_norm_ffn.0.{{p}}", f"{mine}.norm2.{{p}}"),
            (f"{layer}.pre_norm_ffn.1{lin}.{{p}}", f"{mine}.mlp.fc1.{{p}}"),
            (f"{layer}.pre_norm_ffn.{names.fc2}{lin}.{{p}}", f"{mine}.mlp.fc2.{{p}}"),
            (f"{block}.global_rep.{transformer_depths[i - 3]}.{{p}}", f"{stage}.norm.{{p}}"),  # after the layers
            *((f"{block}.{part}.block.{t}.{{rest}}", f"{stage}.{part}.0.{o}.{{rest}}")
              for part, (t, o) in itertools.product(("conv_proj", "fusion"), _CONV_BN)),
        ]  # fmt: skip
    rows += [
        *((f"conv_1x1_exp.block.{theirs}.{{rest}}", f"final_conv.0.{ours}.{{rest}}") for theirs, ours in _CONV_BN),
        (f"{names.head}.{{p}}", "head.{p}"),
    ]
    return KeyTable("official", tuple(rows))


def _depths_of_state(state: dict[str, torch.Tensor]) -> list[int]:
    """The layers of each MobileViT block (``layer_3..5``) of a cvnets checkpoint: the index of its final norm."""
    depths = [0, 0, 0]
    for key in state:
        if (m := re.match(r"^layer_([345])\.\d+\.global_rep\.(\d+)\.", key)) is not None:
            depths[int(m[1]) - 3] = max(depths[int(m[1]) - 3], int(m[2]))
    return depths


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


def key_table(layout: str, config: Any) -> KeyTable:
    """The key table of ``layout`` for the network ``config`` describes."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown MobileViT checkpoint layout {layout!r}; expected one of {LAYOUTS}")
    if layout == "official":
        return official_table(config.attention, config.transformer_depths)
    return TIMM_V2 if config.attention == "separable" else TIMM_V1


def to_litevit(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    if layout == "official":
        attention = "separable" if any(".pre_norm_attn." in key for key in state) else "mhsa"
        return official_table(attention, _depths_of_state(state)).read(state)
    table = TIMM_V2 if any(".attn.qkv_proj." in key for key in state) else TIMM_V1
    return table.read(state)


def from_litevit(state: dict[str, torch.Tensor], layout: str, config: Any) -> dict[str, torch.Tensor]:
    """``state`` (litevit's keys) in the official (cvnets) layout of ``config``'s network, or in timm's
    ``mobilevit_*`` (v1) or ``mobilevitv2_*`` layout."""
    return key_table(layout, config).write(state)
