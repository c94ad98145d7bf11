"""litevit models in timm's key layout and ``config.json`` fields, for the families timm also implements.

timm builds LeViT (``levit_*``), EfficientViT-MSRA (``efficientvit_m0..m5``) and MobileViT v1 and v2
(``mobilevit_*``, ``mobilevitv2_*``) under the same names as litevit. Each family's converter
(``models/*_convert.py``) holds one key table that reads timm's keys and, read backwards, writes them:
:func:`to_timm` (the tests check ``to_litevit(to_timm(state)) == state`` against the reference fixtures' timm keys,
and that timm loads the result with equal logits).

MobileViTv3 and T2T-ViT have no timm implementation, nor has a model whose config differs from its registered
variant in anything but ``num_classes``, ``img_size``, ``in_chans`` and the training-only drop rates (a LeViT
without distillation head, other widths, ...): :func:`timm_architecture` returns None for them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..layers import to_2tuple
from ..registry import DataConfig, get_variant

_FREE_FIELDS = {"num_classes", "img_size", "in_chans", "drop_path", "drop_rate"}  # timm takes them as arguments

# family -> (timm's first convolution, timm's classifier(s), whether timm fixes the input size)
_TIMM_CFG: dict[str, tuple[str, str | list[str], bool]] = {
    "levit": ("stem.conv1.linear", ["head.linear", "head_dist.linear"], True),
    "efficientvit_msra": ("patch_embed.conv1.conv", "head.linear", True),
    "mobilevit": ("stem.conv", "head.fc", False),
}


def timm_architecture(model: nn.Module) -> str | None:
    """timm's name for the network ``model`` is, when timm builds the same one from that name and its arguments."""
    variant = get_variant(model.variant_name)
    if variant.family not in _TIMM_CFG or variant.name not in variant.external_names:
        return None  # MobileViTv3 is registered without timm's names
    fields = [f.name for f in dataclasses.fields(variant.config) if f.name not in _FREE_FIELDS]
    if any(getattr(model.config, name) != getattr(variant.config, name) for name in fields):
        return None
    height, width = to_2tuple(model.config.img_size)
    if variant.family == "efficientvit_msra" and height != width:
        return None  # timm's EfficientViT-MSRA derives its windows from a square image side
    return variant.name


def to_timm(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (litevit's keys for ``model``) in timm's key layout for :func:`timm_architecture`'s network: the
    inverse of the family converter's timm key table (``models/<family>_convert.py``)."""
    converter = get_variant(model.variant_name).converter
    if converter is None or "timm" not in converter.LAYOUTS:
        raise ValueError(f"timm has no layout for {model.variant_name}")
    return converter.from_litevit(state, "timm", model.config)


def timm_config(model: nn.Module, data: DataConfig, class_names: tuple[str, ...] | None) -> dict[str, Any]:
    """The fields of timm's ``config.json`` (``save_for_hf``) that rebuild ``model`` in timm with its head."""
    architecture = timm_architecture(model)
    if architecture is None:
        raise ValueError(f"timm has no network equal to this {model.variant_name}")
    variant = get_variant(model.variant_name)
    first_conv, classifier, fixed = _TIMM_CFG[variant.family]
    config = model.config
    height, width = to_2tuple(config.img_size)
    model_args: dict[str, Any] = {}
    if config.in_chans != 3:
        model_args["in_chans"] = config.in_chans
    if fixed and config.img_size != variant.config.img_size:
        model_args["img_size"] = config.img_size if isinstance(config.img_size, int) else [height, width]
    pretrained_cfg = {
        "custom_load": False,
        "input_size": [config.in_chans, height, width],
        "fixed_input_size": fixed,
        "interpolation": data.interpolation,
        "crop_pct": data.crop_pct,
        "crop_mode": "center",
        "mean": list(data.mean),
        "std": list(data.std),
        "num_classes": config.num_classes,
        "pool_size": None,
        "first_conv": first_conv,
        "classifier": classifier,
    }
    out: dict[str, Any] = {
        "architecture": architecture,
        "num_classes": config.num_classes,
        "num_features": model.num_features,
        "global_pool": "avg",
    }
    if class_names is not None:
        out["label_names"] = list(class_names)
    if model_args:
        out["model_args"] = model_args
    out["pretrained_cfg"] = pretrained_cfg
    return out
