"""The model registry: one :class:`Variant` record per model, with its paper numbers and data config.

Nothing here loads weights: :mod:`litevit.weights.loading` builds models and reads checkpoints on top of it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Paper:
    """What the paper (or the official repository's README) reports for a variant."""

    params_m: float  # parameters, millions
    macs_m: float  # multiply-accumulates at ``img_size``, millions (papers' "FLOPs" for LeViT/EfficientViT)
    top1: float | None  # ImageNet-1k top-1, %
    img_size: int  # the evaluation resolution the numbers refer to
    source: str  # where the numbers come from (paper table, README)
    throughput: dict[str, float] = field(default_factory=dict)  # hardware -> images/s as published


@dataclass(frozen=True)
class DataConfig:
    """How the official checkpoints expect images: resolution, crop, interpolation, pixel range, normalisation."""

    img_size: int = 224
    crop_pct: float = 0.875  # resize the short side to img_size / crop_pct, then centre-crop img_size
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN  # applied after scaling pixels to [0, 1]
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"


class Converter(Protocol):
    """A family's checkpoint converter module (``models/<family>_convert.py``)."""

    LAYOUTS: tuple[str, ...]  # the foreign layouts it reads

    def detect(self, state: dict[str, torch.Tensor]) -> str | None: ...  # a layout, or None for litevit's own

    def to_litevit(self, state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]: ...

    # litevit's keys written in ``layout``: the same key table read backwards (models/key_table.py)
    def from_litevit(self, state: dict[str, torch.Tensor], layout: str, config: Any) -> dict[str, torch.Tensor]: ...

    def key_table(self, layout: str, config: Any) -> Any: ...  # the KeyTable of ``layout`` for ``config``'s network


@dataclass(frozen=True)
class Variant:
    name: str
    family: str  # the model class's ``family`` attribute (never a file name)
    builder: Callable[[Any], nn.Module]  # model class taking the config
    config: Any  # frozen dataclass of the family
    paper: Paper
    data: DataConfig
    external_names: tuple[str, ...] = ()  # names of the same model in the official code and in timm
    converter: Converter | ModuleType | None = None  # reads the family's official and timm layouts

    def build(self, **overrides: Any) -> nn.Module:
        """The model with config fields replaced (no weights loaded), named after the variant."""
        model = self.builder(build_config(self.name, **overrides))
        model.variant_name = self.name
        return model


_REGISTRY: dict[str, Variant] = {}


def register(
    name: str,
    builder: Callable[[Any], nn.Module],
    config: Any,
    paper: Paper,
    data: DataConfig = DataConfig(),
    external_names: tuple[str, ...] = (),
) -> Variant:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    family = getattr(builder, "family", None)
    if not isinstance(family, str):
        raise TypeError(f"{builder.__name__} has no 'family' class attribute naming its model family")
    variant = Variant(name, family, builder, config, paper, data, external_names, getattr(builder, "converter", None))
    _REGISTRY[name] = variant
    return variant


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, in registration order."""
    return [name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern)]


def get_variant(name: str) -> Variant:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(_REGISTRY)}") from None


def family_line(name: str) -> str:
    """A registered model's family, with MobileViT's versions apart (``mobilevit``, ``mobilevitv2``,
    ``mobilevitv3``): one family class, three architectures, each with its own int8 settings and plot line."""
    variant = get_variant(name)
    return name.split("_")[0] if variant.family == "mobilevit" else variant.family


def find_variant(external_name: str) -> Variant | None:
    """The variant that the official code or timm calls ``external_name``, if any."""
    for variant in _REGISTRY.values():
        if external_name == variant.name or external_name in variant.external_names:
            return variant
    return None


def build_config(name: str, num_classes: int | None = None, img_size: Any = None, **overrides: Any) -> Any:
    """The variant's config with ``num_classes``, ``img_size`` and any field overrides applied."""
    variant = get_variant(name)
    valid = {f.name for f in dataclasses.fields(variant.config)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {name}; valid options: {', '.join(sorted(valid))}"
        )
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if img_size is not None:
        overrides["img_size"] = img_size
    return dataclasses.replace(variant.config, **overrides)


def families() -> dict[str, Converter | ModuleType | None]:
    """Every registered family with its checkpoint converter, in registration order."""
    return {v.family: v.converter for v in _REGISTRY.values()}


def variants_markdown(names: list[str] | None = None) -> str:
    """The README's table of variants, generated from the registry."""
    rows = [
        "| model | family | params (M) | MACs (M) | top-1 (%) | input | crop | interpolation | source of the numbers |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name in names if names is not None else list_models():
        v = get_variant(name)
        p, d = v.paper, v.data
        top1 = f"{p.top1:.1f}" if p.top1 is not None else "-"
        rows.append(
            f"| `{name}` | {v.family} | {p.params_m:.1f} | {p.macs_m:.0f} | {top1} | {p.img_size} | "
            f"{d.crop_pct:g} | {d.interpolation} | {p.source} |"
        )
    return "\n".join(rows)
