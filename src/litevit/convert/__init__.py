"""The only place that knows the official and timm checkpoint key names.

Each family has a module with ``LAYOUTS`` (the foreign layouts it reads), ``detect(state_dict)`` returning
one of them or ``None`` for litevit's own layout, and ``to_litevit(state_dict, layout)``.
"""

from __future__ import annotations

from types import ModuleType

import torch

from . import efficientvit_msra, levit, mobilevit, t2t_vit

CONVERTERS: dict[str, ModuleType] = {
    "levit": levit,
    "efficientvit_msra": efficientvit_msra,
    "mobilevit": mobilevit,
    "t2t_vit": t2t_vit,
}


def to_litevit(state_dict: dict[str, torch.Tensor], family: str) -> tuple[dict[str, torch.Tensor], str]:
    """Rename a checkpoint of ``family`` into litevit's layout; returns it and the layout it was in."""
    converter = CONVERTERS.get(family)
    layout = converter.detect(state_dict) if converter is not None else None
    if layout is None:
        return dict(state_dict), "litevit"
    return converter.to_litevit(state_dict, layout), layout
