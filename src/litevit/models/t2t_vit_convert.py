"""T2T-ViT checkpoint layout of yitu-opensource/T2T-ViT (``official``; timm has no port).

The official checkpoints are ``{"state_dict": ..., "state_dict_ema": ...}`` (timm's CheckpointSaver) or a bare
state dict; :func:`litevit.weights.reading.read_checkpoint` unwraps the nesting and ``module.``. Only the performer's
keys differ from litevit's: ``w`` is ``random_features`` and the MLP's ``mlp.0``/``mlp.2`` are ``mlp.fc1``/``mlp.fc2``.
The token-transformer (T2T-ViT_t) checkpoints already use litevit's key names. The frozen ``pos_embed`` table is kept:
the model resamples it when the checkpoint was trained at another resolution.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .key_table import KeyTable

LAYOUTS = ("official",)

_PERFORMER = re.compile(r"^tokens_to_token\.attention\d\.(?:w|mlp\.[02]\.(?:weight|bias))$")
_SAME = (
    *((f"{part}.{{rest}}", f"{part}.{{rest}}") for part in ("tokens_to_token", "blocks", "norm", "head")),
    ("cls_token", "cls_token"),
    ("pos_embed", "pos_embed"),
)
# the official keys against litevit's (both directions: models/key_table.py): with the performer tokens-to-token,
# and with the token transformer (T2T-ViT_t), whose keys are litevit's
OFFICIAL_PERFORMER = KeyTable(
    "official",
    (
        ("tokens_to_token.attention{n}.w", "tokens_to_token.attention{n}.random_features"),
        ("tokens_to_token.attention{n}.mlp.0.{rest}", "tokens_to_token.attention{n}.mlp.fc1.{rest}"),
        ("tokens_to_token.attention{n}.mlp.2.{rest}", "tokens_to_token.attention{n}.mlp.fc2.{rest}"),
        *_SAME,
    ),
)
OFFICIAL_TRANSFORMER = KeyTable("official", _SAME)


def detect(state: dict[str, torch.Tensor]) -> str | None:
    """``official`` when the checkpoint holds an official performer key, else ``None`` (litevit's names)."""
    if any(_PERFORMER.match(key) for key in state):
        return "official"
    return None


def to_litevit(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    if layout != "official":
        raise ValueError(f"unknown T2T-ViT checkpoint layout {layout!r}; expected one of {LAYOUTS}")
    return OFFICIAL_PERFORMER.read(state)


def key_table(layout: str, config: Any) -> KeyTable:
    """The key table of ``layout`` for ``config``'s tokens-to-token module."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown T2T-ViT checkpoint layout {layout!r}; expected one of {LAYOUTS}")
    return OFFICIAL_PERFORMER if config.tokens_type == "performer" else OFFICIAL_TRANSFORMER


def from_litevit(state: dict[str, torch.Tensor], layout: str, config: Any) -> dict[str, torch.Tensor]:
    """``state`` (litevit's keys) in the official layout of ``config``'s tokens-to-token module."""
    return key_table(layout, config).write(state)
