"""LeViT checkpoint layouts: facebookresearch/LeViT (``official``) and timm's ``levit_*`` / ``levit_conv_*``."""

from __future__ import annotations

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


def detect(state: dict[str, torch.Tensor]) -> str | None:
    if any(k.startswith("patch_embed.") for k in state) and any(k.startswith("blocks.") for k in state):
        return "official"
    if any(k.startswith("stem.conv1.") for k in state):
        return "timm"
    return None


def official_table(prefixes: dict[int, str]) -> KeyTable:
    """The official keys against litevit's (both directions: models/key_table.py) for a network whose official flat
    ``blocks.{n}`` are litevit's ``prefixes[n]``: :func:`_prefixes_of_state` (reading) or :func:`_prefixes_of_config`
    (writing) list them. Official ``Linear_BN``/``Conv2d_BN`` hold ``c`` and ``bn``, ``BN_Linear`` ``bn`` and ``l``."""
    rows: list[tuple[str, str | None]] = [
        ("patch_embed.{i}.c.{rest}", "stem.{i}.conv.{rest}"),
        ("patch_embed.{i}.bn.{rest}", "stem.{i}.bn.{rest}"),
    ]
    for n, prefix in prefixes.items():
        if prefix.endswith("downsample.attn."):  # AttentionSubsample: no Residual around it
            theirs, parts = f"blocks.{n}.", (("kv", "kv"), ("q.1", "q"), ("proj.1", "proj"))
        elif prefix.endswith("attn.m."):
            theirs, parts = f"blocks.{n}.m.", (("qkv", "qkv"), ("proj.1", "proj"))
        else:  # an MLP: Residual(Sequential(Linear_BN, act, Linear_BN))
            theirs, parts = f"blocks.{n}.m.", (("0", "fc1"), ("2", "fc2"))
        if "attn" in prefix:
            rows += [(f"{theirs}attention_bias_idxs", None), (f"{theirs}attention_biases", f"{prefix}attention_biases")]
        for official, ours in parts:
            rows += [
                (f"{theirs}{official}.c.{{rest}}", f"{prefix}{ours}.linear.{{rest}}"),
                (f"{theirs}{official}.bn.{{rest}}", f"{prefix}{ours}.bn.{{rest}}"),
            ]
    for head in ("head", "head_dist"):
        rows += [(f"{head}.bn.{{rest}}", f"{head}.bn.{{rest}}"), (f"{head}.l.{{rest}}", f"{head}.linear.{{rest}}")]
    return KeyTable("official", tuple(rows))


def _prefixes_of_state(state: dict[str, torch.Tensor]) -> dict[int, str]:
    """Each official ``blocks.{n}`` of a checkpoint and its place in our stages (the official list is flat)."""
    indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()})
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


def _prefixes_of_config(config: Any) -> dict[int, str]:
    """The official flat ``blocks`` list of the network ``config`` describes, in litevit's prefixes: each stage after
    the first opens with a shrinking attention and its MLP; every block is an attention and an MLP."""
    prefixes: list[str] = []
    for stage, depth in enumerate(config.depths):
        if stage > 0:
            prefixes += [f"stages.{stage}.downsample.attn.", f"stages.{stage}.downsample.mlp.m."]
        for block in range(depth):
            prefixes += [f"stages.{stage}.blocks.{block}.attn.m.", f"stages.{stage}.blocks.{block}.mlp.m."]
    return dict(enumerate(prefixes))


def key_table(layout: str, config: Any) -> KeyTable:
    """The key table of ``layout`` for the network ``config`` describes."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown LeViT checkpoint layout {layout!r}; expected one of {LAYOUTS}")
    return official_table(_prefixes_of_config(config)) if layout == "official" else TIMM


def to_litevit(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    table = official_table(_prefixes_of_state(state)) if layout == "official" else TIMM
    out = {}
    for key, value in state.items():
        new = table.to_litevit(key)
        if new is None:
            continue
        # levit_conv_*: 1x1 conv weights (out, in, 1, 1) become linear weights, except in the conv stem
        if value.ndim == 4 and value.shape[-2:] == (1, 1) and not new.startswith("stem."):
            value = value.flatten(1)
        out[new] = value
    return out


def from_litevit(state: dict[str, torch.Tensor], layout: str, config: Any) -> dict[str, torch.Tensor]:
    """``state`` (litevit's keys) in the official layout of ``config``'s network or in timm's ``levit_*`` (linear
    weights, as both keep them)."""
    return key_table(layout, config).write(state)
