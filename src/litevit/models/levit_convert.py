"""LeViT checkpoint layouts: facebookresearch/LeViT (``official``) and timm's ``levit_*`` / ``levit_conv_*``."""

from __future__ import annotations

import re
from typing import Any

import torch

from .key_table import KeyTable

LAYOUTS = ("official", "timm")

# timm's keys against litevit's (both directions: models/key_table.py); timm's stem.conv{1..4} are our stem.{0,2,4,6}
TIMM = KeyTable(
    "timm",
    (
        ("{rest}.attention_bias_idxs", None),  # rebuilt by the model
        *((f"stem.conv{n}.linear.{{rest}}", f"stem.{2 * n - 2}.conv.{{rest}}") for n in range(1, 5)),
        *((f"stem.conv{n}.bn.{{rest}}", f"stem.{2 * n - 2}.bn.{{rest}}") for n in range(1, 5)),
        ("stages.{s}.downsample.attn_downsample.q.ln.{rest}", "stages.{s}.downsample.attn.q.{rest}"),
        ("stages.{s}.downsample.attn_downsample.proj.ln.{rest}", "stages.{s}.downsample.attn.proj.{rest}"),
        ("stages.{s}.downsample.attn_downsample.{rest}", "stages.{s}.downsample.attn.{rest}"),
        ("stages.{s}.downsample.mlp.ln{n}.{rest}", "stages.{s}.downsample.mlp.m.fc{n}.{rest}"),
        ("stages.{s}.blocks.{b}.attn.proj.ln.{rest}", "stages.{s}.blocks.{b}.attn.m.proj.{rest}"),
        ("stages.{s}.blocks.{b}.attn.{rest}", "stages.{s}.blocks.{b}.attn.m.{rest}"),
        ("stages.{s}.blocks.{b}.mlp.ln{n}.{rest}", "stages.{s}.blocks.{b}.mlp.m.fc{n}.{rest}"),
        ("head.{part}.{rest}", "head.{part}.{rest}"),
        ("head_dist.{part}.{rest}", "head_dist.{part}.{rest}"),
    ),
)

# official sub-module names -> ours, inside one attention / MLP / stem entry
_OFFICIAL_SUB = [
    (re.compile(r"^(qkv|kv|proj\.1|q\.1|0|2)\.c\.(.*)$"), "linear"),
    (re.compile(r"^(qkv|kv|proj\.1|q\.1|0|2)\.bn\.(.*)$"), "bn"),
]
_OFFICIAL_NAMES = {"qkv": "qkv", "kv": "kv", "proj.1": "proj", "q.1": "q", "0": "fc1", "2": "fc2"}


def detect(state: dict[str, torch.Tensor]) -> str | None:
    if any(k.startswith("patch_embed.") for k in state) and any(k.startswith("blocks.") for k in state):
        return "official"
    if any(k.startswith("stem.conv1.") for k in state):
        return "timm"
    return None


def _official_block_prefixes(state: dict[str, torch.Tensor]) -> dict[int, str]:
    """Map each official ``blocks.{n}`` to its place in our stages (the official list is flat)."""
    indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})
    prefixes, stage, block, after_downsample = {}, 0, 0, False
    for n in indices:
        if f"blocks.{n}.kv.c.weight" in state:  # shrinking attention: opens the next stage
            stage, block, after_downsample = stage + 1, 0, True
            prefixes[n] = f"stages.{stage}.downsample.attn."
        elif f"blocks.{n}.m.qkv.c.weight" in state:
            prefixes[n] = f"stages.{stage}.blocks.{block}.attn.m."
            after_downsample = False
        elif after_downsample:
            prefixes[n] = f"stages.{stage}.downsample.mlp.m."
            after_downsample = False
        else:
            prefixes[n] = f"stages.{stage}.blocks.{block}.mlp.m."
            block += 1
    return prefixes


def _official_key(key: str, prefixes: dict[int, str]) -> str | None:
    if key.endswith("attention_bias_idxs"):
        return None  # rebuilt by the model
    if m := re.match(r"^patch_embed\.(\d+)\.c\.(.*)$", key):
        return f"stem.{m[1]}.conv.{m[2]}"
    if key.startswith("patch_embed."):
        return "stem." + key.removeprefix("patch_embed.")
    if m := re.match(r"^(head(?:_dist)?)\.l\.(.*)$", key):
        return f"{m[1]}.linear.{m[2]}"
    if key.startswith(("head.", "head_dist.")):
        return key
    if m := re.match(r"^blocks\.(\d+)\.(?:m\.)?(.*)$", key):
        prefix, rest = prefixes[int(m[1])], m[2]
        if rest == "attention_biases":
            return prefix + rest
        for pattern, kind in _OFFICIAL_SUB:
            if sub := pattern.match(rest):
                return f"{prefix}{_OFFICIAL_NAMES[sub[1]]}.{kind}.{sub[2]}"
    return key  # unknown: kept, so that loading lists it among the unexpected keys


def to_litevit(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    if layout == "official":
        prefixes = _official_block_prefixes(state)
        rename = lambda k: _official_key(k, prefixes)  # noqa: E731
    else:
        rename = TIMM.to_litevit
    out = {}
    for key, value in state.items():
        new = rename(key)
        if new is None:
            continue
        # levit_conv_*: 1x1 conv weights (out, in, 1, 1) become linear weights, except in the conv stem
        if value.ndim == 4 and value.shape[-2:] == (1, 1) and not new.startswith("stem."):
            value = value.flatten(1)
        out[new] = value
    return out


def from_litevit(state: dict[str, torch.Tensor], layout: str, config: Any) -> dict[str, torch.Tensor]:
    """``state`` (litevit's keys) in timm's ``levit_*`` layout (linear weights, as ``levit_*`` keeps them)."""
    return TIMM.write(state, layout)
