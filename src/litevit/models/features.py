"""Multi-scale feature maps for detection and segmentation: timm's ``features_only`` contract for every family.

Every litevit model describes its feature points in ``model.feature_info`` (a list of dicts with ``num_chs``,
``reduction`` and ``module``, one per stage) and returns them from
``forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)`` with timm's semantics.
``prune_intermediate_layers(indices, prune_norm, prune_head)`` (timm's) drops from a model what computing the feature
points at ``indices`` does not need: the stages past the last one, the head, and what only the head uses (MobileViT's
``final_conv``). :func:`features_only` turns a classifier (weights already loaded) into a module whose forward returns
the chosen maps, ``B, C_i, H_i, W_i``, described by a :class:`FeatureInfo`. It prunes the classifier that way, so
that every parameter it keeps gets a gradient (DistributedDataParallel rejects a parameter that never does) and its
``state_dict`` is the classifier's restricted to the modules the maps need.

T2T-ViT is single-scale: its backbone works on one 1/16 token grid, and its only finer maps are the two shallow,
64-wide maps of the T2T module (1/4 and 1/8). :class:`SimpleFeaturePyramid` (ViTDet, Li, Mao, Girshick, He,
arXiv:2203.16527, Sec. 3) builds strides 4, 8, 16 and 32 from the 1/16 map instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

OUTPUT_FORMATS = ("NCHW", "NHWC")


def take_indices(
    num_features: int, indices: int | Sequence[int] | None, kept: int | None = None
) -> tuple[list[int], int]:
    """Feature points to return and the last one to compute, as timm's ``feature_take_indices``.

    ``None``: all; an int ``n``: the last ``n``; a sequence: those indices, negative ones counted from the end.
    The result is sorted (maps come out in network order) and free of duplicates. ``kept``: how many points a
    pruned model still computes (``prune_intermediate_layers``); asking for a later one is an error.
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"indices={indices} asks for the last {indices} of {num_features} feature points")
        take = list(range(num_features - indices, num_features))
    else:
        take = []
        for index in indices:
            position = index + num_features if index < 0 else index
            if not 0 <= position < num_features:
                raise ValueError(f"feature index {index} is out of range for {num_features} feature points")
            take.append(position)
        if not take:
            raise ValueError("indices selects no feature point")
        take = sorted(set(take))
    if kept is not None and take[-1] >= kept:
        raise ValueError(
            f"feature point {take[-1]} was pruned: this model keeps points 0..{kept - 1} of {num_features} "
            "(prune_intermediate_layers)"
        )
    return take, take[-1]


def to_format(x: torch.Tensor, output_fmt: str) -> torch.Tensor:
    """A ``B, C, H, W`` map in ``output_fmt`` (``"NCHW"`` or ``"NHWC"``)."""
    if output_fmt == "NCHW":
        return x
    if output_fmt == "NHWC":
        return x.permute(0, 2, 3, 1)  # B, C, H, W -> B, H, W, C
    raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}, got {output_fmt!r}")


class FeatureInfo:
    """The selected entries of a model's ``feature_info``, with timm's accessors."""

    def __init__(self, info: Sequence[dict[str, Any]], out_indices: Sequence[int]) -> None:
        self.out_indices = tuple(out_indices)
        self.info = [dict(info[i]) for i in self.out_indices]

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        if idx is None:
            return [entry[key] for entry in self.info]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)

    def get_dicts(self) -> list[dict[str, Any]]:
        return [dict(entry) for entry in self.info]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.info[idx]

    def __len__(self) -> int:
        return len(self.info)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo({self.info})"


class FeatureExtractor(nn.Module):
    """A classifier cut to its trunk: ``forward(x)`` is the list of maps at ``out_indices``.

    The classifier is pruned to what those maps need (``prune_intermediate_layers``: no head, no later stage, no
    layer only the head uses) and the extractor takes over the classifier's own registries of submodules,
    parameters and buffers, so that parameter names, ``state_dict``, ``.to()``, ``litevit.fuse`` and optimisers see
    exactly the kept tensors under the classifier's names, and its ``forward_intermediates`` runs on them unchanged.
    Other attributes (``config``, ``variant_name``) are read from the classifier.
    """

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] | None = None) -> None:
        super().__init__()
        info = getattr(model, "feature_info", None)
        methods = ("forward_intermediates", "prune_intermediate_layers")
        if not isinstance(info, list) or not all(callable(getattr(model, m, None)) for m in methods):
            raise TypeError(f"{type(model).__name__} has no feature_info list and {' and '.join(methods)} methods")
        # the maps are taken with norm=True, so a final norm that feeds one is kept
        take = model.prune_intermediate_layers(out_indices, prune_norm=False, prune_head=True)
        # shared, not copied: a child replaced through either object (fuse does this) is replaced in both
        for registry in ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules"):
            object.__setattr__(self, registry, getattr(model, registry))
        object.__setattr__(self, "trunk", model)  # a plain attribute: registering it would nest every name
        self.out_indices = take
        self.feature_info = FeatureInfo(info, take)
        self.train(model.training)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            trunk = self.__dict__.get("trunk")
            if trunk is None:
                raise
            return getattr(trunk, name)

    def train(self, mode: bool = True) -> FeatureExtractor:
        super().train(mode)
        self.trunk.training = mode  # the trunk object itself is not a child
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        trunk = self.trunk
        return trunk.forward_intermediates(x, self.out_indices, norm=True, stop_early=True, intermediates_only=True)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``B, C, H, W`` map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x.permute(0, 2, 3, 1))  # B, C, H, W -> B, H, W, C
        return x.permute(0, 3, 1, 2)  # B, H, W, C -> B, C, H, W


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (arXiv:2203.16527, Sec. 3, Fig. 2c) over the last map of ``features``.

    From a stride-``s`` map with ``C`` channels: two 2x2 stride-2 deconvolutions (with LayerNorm and GELU between)
    to stride ``s / 4`` and ``C / 4`` channels, one deconvolution to ``s / 2`` and ``C / 2``, the map itself, and
    2x2 max pooling to ``2 s``. For T2T-ViT (``s = 16``) that is strides 4, 8, 16, 32. The deconvolutions are new,
    untrained layers (keys ``up4.*``, ``up2.*``); the backbone's keys are prefixed ``body.``.
    """

    def __init__(self, features: FeatureExtractor) -> None:
        super().__init__()
        self.body = features
        c, s = features.feature_info.channels(-1), features.feature_info.reduction(-1)
        if c % 4 or s % 4:
            raise ValueError(f"the simple pyramid needs channels and stride divisible by 4; got {c} and {s}")
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(c, c // 2, 2, stride=2),
            LayerNorm2d(c // 2),
            nn.GELU(),
            nn.ConvTranspose2d(c // 2, c // 4, 2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(c, c // 2, 2, stride=2)
        self.down2 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        levels = [(c // 4, s // 4, "up4"), (c // 2, s // 2, "up2"), (c, s, "body"), (c, 2 * s, "down2")]
        self.feature_info = FeatureInfo([dict(num_chs=n, reduction=r, module=m) for n, r, m in levels], range(4))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.body(x)[-1]
        return [self.up4(y), self.up2(y), y, self.down2(y)]


def features_only(
    model: nn.Module, out_indices: int | Sequence[int] | None = None, *, simple_pyramid: bool = False
) -> nn.Module:
    """The feature extractor of a classifier whose weights are already loaded (the classifier is consumed).

    ``out_indices``: which entries of ``model.feature_info`` to return (timm's ``indices``: None for all, an int
    ``n`` for the last ``n``, or a list, negative indices allowed). ``simple_pyramid``: return
    :class:`SimpleFeaturePyramid` over the last selected map (meant for T2T-ViT's single 1/16 scale).
    """
    if simple_pyramid:
        return SimpleFeaturePyramid(FeatureExtractor(model, [-1] if out_indices is None else out_indices))
    return FeatureExtractor(model, out_indices)
