"""EfficientViT (MSRA) checkpoint layouts: microsoft/Cream ``EfficientViT_M*`` (``official``) and timm's
``efficientvit_m*`` (``timm``).

The official network keeps flat ``blocks1..3`` lists in which stage ``n > 1`` opens with its subsample block
(entries 0, 1, 2: DWConv+FFN, patch merging, DWConv+FFN); timm nests the same modules as
``stages.{i}.downsample.{res1,patchmerge,res2}`` and ``stages.{i}.blocks.{j}``. Both store the bias tables
flattened, ``(heads, window ** 2)``; litevit keeps ``(heads, window_h, window_w)``.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..layers import square_side
from .key_table import KeyTable

LAYOUTS = ("official", "timm")

_SUBSAMPLE_PARTS = {"0.0": "pre.dw", "0.1": "pre.ffn", "2.0": "post.dw", "2.1": "post.ffn"}
_TIMM_SUBSAMPLE = {"res1.0": "pre.dw", "res1.1": "pre.ffn", "res2.0": "post.dw", "res2.1": "post.ffn"}

# timm's keys against litevit's (both directions: models/key_table.py); timm's patch_embed.conv{1..4} are our
# stem.{0,2,4,6}, and timm's block projection is Sequential(ReLU, ConvNorm)
TIMM = KeyTable(
    "timm",
    (
        ("{rest}.attention_bias_idxs", None),  # rebuilt by the model
        *((f"patch_embed.conv{n}.{{rest}}", f"stem.{2 * n - 2}.{{rest}}") for n in range(1, 5)),
        *(
            (f"stages.{{s}}.downsample.{theirs}.{{rest}}", f"stages.{{s}}.downsample.{ours}.{{rest}}")
            for theirs, ours in _TIMM_SUBSAMPLE.items()
        ),
        ("stages.{s}.downsample.patchmerge.{rest}", "stages.{s}.downsample.merge.{rest}"),
        ("stages.{s}.blocks.{b}.mixer.m.attn.proj.1.{rest}", "stages.{s}.blocks.{b}.mixer.m.attn.proj.{rest}"),
        ("stages.{s}.blocks.{b}.{rest}", "stages.{s}.blocks.{b}.{rest}"),
        ("head.{part}.{rest}", "head.{part}.{rest}"),
    ),
)


def detect(state: dict[str, torch.Tensor]) -> str | None:
    if any(k.startswith(("blocks1.", "patch_embed.0.c.")) for k in state):
        return "official"
    if any(k.startswith("patch_embed.conv1.") for k in state):
        return "timm"
    return None


def _inside_block(rest: str) -> str:
    """Names inside a sandwich block, shared by both layouts once ``c``/``l`` became ``conv``/``linear``."""
    return rest.replace("mixer.m.attn.proj.1.", "mixer.m.attn.proj.")


def _official_key(key: str, stages_with_subsample: set[int]) -> str:
    # Conv2d_BN holds ``c`` and ``bn``, BN_Linear ``bn`` and ``l``: litevit's ConvBN / BNLinear say conv, linear
    key = re.sub(r"\.c\.(weight|bias)$", r".conv.\1", key)
    key = re.sub(r"^(head(?:_dist)?)\.l\.", r"\1.linear.", key)
    if m := re.match(r"^patch_embed\.(\d+)\.(.*)$", key):
        return f"stem.{m[1]}.{m[2]}"
    if m := re.match(r"^blocks(\d+)\.(\d+)\.(.*)$", key):
        stage, index, rest = int(m[1]) - 1, int(m[2]), m[3]
        if stage not in stages_with_subsample:
            return f"stages.{stage}.blocks.{index}.{_inside_block(rest)}"
        if index == 1:
            return f"stages.{stage}.downsample.merge.{rest}"
        if index in (0, 2):
            part, tail = rest.split(".", 1)
            return f"stages.{stage}.downsample.{_SUBSAMPLE_PARTS[f'{index}.{part}']}.{tail}"
        return f"stages.{stage}.blocks.{index - 3}.{_inside_block(rest)}"
    return key


def to_litevit(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    if layout == "official":
        # blocks{n}.1 is the patch merging of stage n - 1 when that stage opens with a subsample block
        subsampled = {int(m[1]) - 1 for k in state if (m := re.match(r"^blocks(\d+)\.1\.conv1\.", k))}
        rename = lambda k: None if k.endswith("attention_bias_idxs") else _official_key(k, subsampled)  # noqa: E731
    else:
        rename = TIMM.to_litevit
    out = {}
    for key, value in state.items():
        new = rename(key)
        if new is None:
            continue  # rebuilt by the model
        if new.endswith("attention_biases") and value.ndim == 2:
            side = square_side(value.shape[1], key)
            value = value.reshape(value.shape[0], side, side)  # heads, window ** 2 -> heads, |dy|, |dx|
        elif value.ndim == 2 and new.endswith((".conv.weight", "se.fc1.weight", "se.fc2.weight")):
            value = value[:, :, None, None]  # 1x1 convolutions saved as linear weights
        out[new] = value
    return out


def from_litevit(state: dict[str, torch.Tensor], layout: str, config: Any) -> dict[str, torch.Tensor]:
    """``state`` (litevit's keys) in timm's ``efficientvit_m*`` layout, bias tables flattened as timm keeps them
    (heads, window_h, window_w -> heads, window_h * window_w)."""
    flat = {key: value.flatten(1) if key.endswith("attention_biases") else value for key, value in state.items()}
    return TIMM.write(flat, layout)
