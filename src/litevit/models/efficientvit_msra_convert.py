"""EfficientViT (MSRA) checkpoint layouts: microsoft/Cream ``EfficientViT_M*`` (``official``) and timm's
``efficientvit_m*`` (``timm``).

The official network keeps flat ``blocks1..3`` lists in which stage ``n > 1`` opens with its subsample block
(entries 0, 1, 2: DWConv+FFN, patch merging, DWConv+FFN); timm nests the same modules as
``stages.{i}.downsample.{res1,patchmerge,res2}`` and ``stages.{i}.blocks.{j}``. Both store the bias tables
flattened, ``(heads, window ** 2)``; litevit keeps ``(heads, window_h, window_w)``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

import torch

from ..layers import square_side
from .key_table import KeyTable

LAYOUTS = ("official", "timm")

_TIMM_SUBSAMPLE = {"res1.0": "pre.dw", "res1.1": "pre.ffn", "res2.0": "post.dw", "res2.1": "post.ffn"}
# the official subsample block's entries 0, 1, 2 of a stage's list: DWConv+FFN, patch merging, DWConv+FFN
_OFFICIAL_SUBSAMPLE = {"0.0": "pre.dw", "0.1": "pre.ffn", "1": "merge", "2.0": "post.dw", "2.1": "post.ffn"}

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


def official_table(depths: Sequence[int], subsampled: Collection[int]) -> KeyTable:
    """The official keys against litevit's (both directions: models/key_table.py) for a network of ``depths``
    sandwich blocks per stage, the stages in ``subsampled`` opening with a subsample block (entries 0, 1, 2 of the
    official list; :func:`_structure_of_state` or the config say which). Official ``Conv2d_BN`` holds ``c`` and
    ``bn``, ``BN_Linear`` ``bn`` and ``l``; a block's projection is ``Sequential(ReLU, Conv2d_BN)``."""
    rows: list[tuple[str, str | None]] = [
        ("{rest}.attention_bias_idxs", None),  # rebuilt by the model
        ("patch_embed.{i}.c.weight", "stem.{i}.conv.weight"),
        ("patch_embed.{i}.bn.{rest}", "stem.{i}.bn.{rest}"),
    ]
    for stage, depth in enumerate(depths):
        theirs, ours = f"blocks{stage + 1}", f"stages.{stage}"
        places = []  # (official prefix, litevit's) of each module whose inner names both layouts share
        if stage in subsampled:
            places = [(f"{theirs}.{index}", f"{ours}.downsample.{part}") for index, part in _OFFICIAL_SUBSAMPLE.items()]
        first = 3 if stage in subsampled else 0  # the blocks follow the subsample block's three entries
        for block in range(depth):
            official, mine = f"{theirs}.{first + block}", f"{ours}.blocks.{block}"
            proj, our_proj = f"{official}.mixer.m.attn.proj.1", f"{mine}.mixer.m.attn.proj"
            rows += [(f"{proj}.c.weight", f"{our_proj}.conv.weight"), (f"{proj}.{{rest}}", f"{our_proj}.{{rest}}")]
            places.append((official, mine))
        for official, mine in places:
            rows += [
                (f"{official}.{{rest}}.c.weight", f"{mine}.{{rest}}.conv.weight"),
                (f"{official}.{{rest}}", f"{mine}.{{rest}}"),
            ]
    rows += [("head.bn.{rest}", "head.bn.{rest}"), ("head.l.{rest}", "head.linear.{rest}")]
    return KeyTable("official", tuple(rows))


def _structure_of_state(state: dict[str, torch.Tensor]) -> tuple[list[int], set[int]]:
    """The sandwich blocks per stage of an official checkpoint, and the stages that open with a subsample block
    (``blocks{n}.1`` is then the patch merging)."""
    indices: dict[int, set[int]] = {}
    for key in state:
        if m := re.match(r"^blocks(\d+)\.(\d+)\.", key):
            indices.setdefault(int(m[1]) - 1, set()).add(int(m[2]))
    subsampled = {stage for stage in indices if any(k.startswith(f"blocks{stage + 1}.1.conv1.") for k in state)}
    stages = range(max(indices, default=-1) + 1)
    return [len(indices.get(stage, ())) - (3 if stage in subsampled else 0) for stage in stages], subsampled


def key_table(layout: str, config: Any) -> KeyTable:
    """The key table of ``layout`` for the network ``config`` describes (every stage but the first subsamples)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown EfficientViT checkpoint layout {layout!r}; expected one of {LAYOUTS}")
    return official_table(config.depths, range(1, len(config.depths))) if layout == "official" else TIMM


def to_litevit(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    table = official_table(*_structure_of_state(state)) if layout == "official" else TIMM
    out = {}
    for key, value in state.items():
        new = table.to_litevit(key)
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
    """``state`` (litevit's keys) in the official layout of ``config``'s network or in timm's ``efficientvit_m*``,
    bias tables flattened as both keep them (heads, window_h, window_w -> heads, window_h * window_w)."""
    flat = {key: value.flatten(1) if key.endswith("attention_biases") else value for key, value in state.items()}
    return key_table(layout, config).write(flat)
