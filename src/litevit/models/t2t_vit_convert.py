"""T2T-ViT checkpoint layout of yitu-opensource/T2T-ViT (``official``; timm has no port).

The official checkpoints are ``{"state_dict": ..., "state_dict_ema": ...}`` (timm's CheckpointSaver) or a bare
state dict; :func:`litevit.weights.checkpoint.read_checkpoint` unwraps the nesting and ``module.``. Only the performer's
keys differ from litevit's: ``w`` is ``random_features`` and the MLP's ``mlp.0``/``mlp.2`` are ``mlp.fc1``/``mlp.fc2``.
The token-transformer (T2T-ViT_t) checkpoints already use litevit's key names. The frozen ``pos_embed`` table is kept:
the model resamples it when the checkpoint was trained at another resolution.
"""

from __future__ import annotations

import re

import torch

LAYOUTS = ("official",)

_PERFORMER = re.compile(r"^(tokens_to_token\.attention\d)\.(w|mlp\.0\.(?:weight|bias)|mlp\.2\.(?:weight|bias))$")
_RENAME = {"w": "random_features", "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2"}


def detect(state: dict[str, torch.Tensor]) -> str | None:
    """``official`` when the checkpoint holds an official performer key, else ``None`` (litevit's names)."""
    if any(_PERFORMER.match(key) for key in state):
        return "official"
    return None


def _official_key(key: str) -> str:
    m = _PERFORMER.match(key)
    if m is None:
        return key
    rest = m[2]
    if rest == "w":
        return f"{m[1]}.{_RENAME['w']}"
    return f"{m[1]}.{_RENAME[rest[:5]]}{rest[5:]}"


def to_litevit(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    if layout != "official":
        raise ValueError(f"unknown T2T-ViT checkpoint layout {layout!r}; expected one of {LAYOUTS}")
    return {_official_key(key): value for key, value in state.items()}
