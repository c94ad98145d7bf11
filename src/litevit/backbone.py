"""litevit backbones for torchvision's detection and segmentation models.

:func:`backbone` returns a module whose forward maps images to an ``OrderedDict`` of feature maps and whose
``out_channels`` says how wide they are, the interface ``torchvision.models.detection`` (FasterRCNN, RetinaNet,
FCOS, MaskRCNN) expects of a backbone. With ``fpn=True`` the maps go through torchvision's
``FeaturePyramidNetwork`` (plus a max-pooled extra level), as ``BackboneWithFPN`` does for ResNets.

Input sizes: EfficientViT and MobileViT take any size (MobileViT at least 32 x 32); LeViT and T2T-ViT only sizes
with the token grid of the ``img_size`` they were built for, so give the detector's transform a fixed size
(``min_size == max_size`` and images of one aspect ratio) and build the backbone with ``img_size=(H, W)`` of the
padded batch; checkpoints trained at 224 are resampled to it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from .models.features import features_only
from .registry import get_variant
from .weights.loading import create_model


class Backbone(nn.Module):
    """Feature maps of ``body`` (a features model) as an ``OrderedDict`` ``"0", "1", ...``, optionally through an FPN.

    ``out_channels``: the width of every returned map (the FPN's, or the body's when all its maps share one width).
    """

    def __init__(self, body: nn.Module, fpn: bool = True, fpn_channels: int = 256, extra_pool: bool = True) -> None:
        super().__init__()
        self.body = body
        channels = list(body.feature_info.channels())
        self.names = [str(i) for i in range(len(channels))]
        self.fpn: FeaturePyramidNetwork | None = None
        if fpn:
            extra = LastLevelMaxPool() if extra_pool else None
            self.fpn = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=extra)
            self.out_channels = fpn_channels
        else:
            if len(set(channels)) != 1:
                raise ValueError(f"maps of different widths {channels}: use fpn=True or select one map")
            self.out_channels = channels[0]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = OrderedDict(zip(self.names, self.body(x), strict=True))
        return self.fpn(maps) if self.fpn is not None else maps


def backbone(
    name: str,
    *,
    checkpoint: str | os.PathLike | dict[str, torch.Tensor] | None = None,
    out_indices: int | Sequence[int] | None = None,
    fpn: bool = True,
    fpn_channels: int = 256,
    extra_pool: bool = True,
    simple_pyramid: bool | None = None,
    **kwargs: Any,
) -> Backbone:
    """A torchvision-ready backbone from a registered model (``checkpoint`` and ``kwargs`` go to ``create_model``).

    ``out_indices``: feature points of the model (default: the last three). ``simple_pyramid``: build strides
    4/8/16/32 from the last map with :class:`litevit.models.features.SimpleFeaturePyramid` (default: for T2T-ViT only,
    whose backbone is single-scale).
    """
    if simple_pyramid is None:
        simple_pyramid = get_variant(name).family == "t2t_vit"
    model = create_model(name, checkpoint=checkpoint, **kwargs)
    if out_indices is None:
        out_indices = [-1] if simple_pyramid else 3
    return Backbone(features_only(model, out_indices, simple_pyramid=simple_pyramid), fpn, fpn_channels, extra_pool)
