"""MobileViT v1, v2 and v3: one family, with v2 and v3 written as the changes they make to the v1 block.

- MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer. Mehta, Rastegari. ICLR 2022.
  arXiv:2110.02178. Official code: https://github.com/apple/ml-cvnets (``cvnets/models/classification/mobilevit.py``,
  ``cvnets/modules/mobilevit_block.py``, ``config/classification/imagenet/mobilevit.yaml``).
- Separable Self-attention for Mobile Vision Transformers (MobileViTv2). Mehta, Rastegari. arXiv:2206.02680.
  Official code: apple/ml-cvnets (``mobilevit_v2.py``, ``MobileViTBlockv2``, ``config/.../mobilevit_v2.yaml``).
- MobileViTv3: Mobile-Friendly Vision Transformer with Simple and Effective Fusion of Local, Global and Input
  Features. Wadekar, Chaurasia. arXiv:2209.15159. Official code: https://github.com/micronDLA/MobileViTv3
  (``MobileViTv3-v1`` on the v1 network: XXS/XS/S and their ``_fast`` = L2 variants; ``MobileViTv3-v2`` on the v2
  network: widths 0.5/0.75/1.0).

The network (all versions): a 3x3 stride-2 stem, five stages ``layer_1..layer_5`` of MobileNetV2 inverted residuals,
the last three each ending in a MobileViT block, an optional final 1x1 conv, global average pooling and a linear
classifier. Every convolution is Conv+BN(+SiLU). The three block versions differ only in:

===================  ==========================  =============================  ==============================
                     v1 (``mhsa``, ``concat``)   v2 (``separable``, ``none``)   v3 (``local_global``)
===================  ==========================  =============================  ==============================
local n x n conv     full conv                   depthwise                      depthwise
global mixing        multi-head self-attention   separable self-attention        as its base (v1 or v2)
                     over tokens, LayerNorm      (linear in tokens), GroupNorm(1)
fusion               n x n conv on               none (1x1 projection, no act)   1x1 conv on cat(local, global)
                     cat(input, global)                                         plus the block input (residual)
===================  ==========================  =============================  ==============================

MACs: the published numbers (papers, v3 README) come from ml-cvnets' profiler, which counts v1 attention as
2 * N * d^2 per sequence instead of 2 * N^2 * d and counts biases; ``count_macs(model, 256, convention="cvnets")``
reproduces them (v1 XXS: 364 M published, 407 M true matmul count).

Differences from the official code:
- unfold/fold are reshape + permute in every version (cvnets v2 uses ``F.unfold``/``F.fold``; same ordering).
- cvnets' ``LayerNorm`` treats a ``(B*P, N, C)`` token tensor as channel-first when ``N == C`` (and then divides
  by ``std + eps``); litevit always normalises over channels, as the paper describes. The two agree whenever the
  number of patches differs from the transformer width, which holds for every variant at 256 x 256.
- the official classifiers apply dropout before the linear layer during training; here it is ``drop_rate``
  (default 0). Dropout inside the transformer is left out (inference is unaffected); ``drop_path`` is offered.
- ``litevit.fuse`` folds BatchNorm into convolutions, the affine part of every pre-norm into the projection that
  follows it, and the attention scale into the query weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..layers import adapt_input_weights, check_images, checkpointed, make_divisible, set_img_size
from ..registry import DataConfig, Paper, register
from . import mobilevit_convert
from .features import take_indices, to_format
from .mobilevit_blocks import ATTENTIONS, FUSIONS, InvertedResidual, MobileViTBlock, MobileViTConfig, conv_bn


class MobileViT(nn.Module):
    """MobileViT v1/v2/v3: stem, five stages (MV2 blocks; MobileViT blocks in the last three), pool, classifier."""

    family = "mobilevit"
    converter = mobilevit_convert  # reads the official and timm checkpoint layouts

    head_prefixes = ("head.",)

    def __init__(self, config: MobileViTConfig) -> None:
        super().__init__()
        self.config = config
        if config.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {config.attention!r}")
        if config.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {config.fusion!r}")
        if config.attention == "separable" and config.fusion == "concat":
            raise ValueError("the v1 concat fusion is defined for multi-head attention blocks only")
        if len(config.dims) != 5 or len(config.depths) != 2:
            raise ValueError(f"expected 5 dims and 2 MV2 depths, got dims={config.dims}, depths={config.depths}")
        if len(config.transformer_dims) != 3 or len(config.transformer_depths) != 3:
            raise ValueError("expected 3 transformer_dims and 3 transformer_depths (layer_3 .. layer_5)")
        self.stem = conv_bn(config.in_chans, config.stem_chs, 3, 2)
        stages: list[nn.Sequential] = []
        in_ch = config.stem_chs
        for i, dim in enumerate(config.dims):
            blocks: list[nn.Module] = []
            if i < 2:
                for j in range(config.depths[i]):
                    stride = 2 if (i == 1 and j == 0) else 1
                    blocks.append(InvertedResidual(in_ch, dim, stride, config.expand_ratio, config.drop_path))
                    in_ch = dim
            else:
                blocks.append(InvertedResidual(in_ch, dim, 2, config.expand_ratio, config.drop_path))
                blocks.append(
                    MobileViTBlock(dim, config.transformer_dims[i - 2], config.transformer_depths[i - 2], config)
                )
                in_ch = dim
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.feature_info = [
            dict(num_chs=dim, reduction=2 ** (i + 1), module=f"stages.{i}") for i, dim in enumerate(config.dims)
        ]
        self.final_conv: nn.Module = nn.Identity()
        if config.final_expansion:
            self.num_features = min(config.final_expansion * in_ch, 960)
            self.final_conv = conv_bn(in_ch, self.num_features)
        else:
            self.num_features = in_ch
        self.head_drop = nn.Dropout(config.drop_rate)
        self.head: nn.Module
        self.reset_classifier(config.num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh linear classifier for ``num_classes`` (0: none, pooled features out)."""
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        return set()

    def get_classifier(self) -> nn.Module:
        return self.head

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every block while training: activations are recomputed during backward."""
        for i, stage in enumerate(self.stages):
            self.stages[i] = checkpointed(stage, enable)
        self.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        """timm's parameter groups (its ByobNet's, layer-wise lr decay): the stem, each block, ``final_conv`` with
        the last block."""
        blocks = r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)"
        return dict(stem=r"^stem", blocks=[(blocks, None), (r"^final_conv", (99999,))])

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Record another input size; no weight or table of MobileViT depends on it."""
        set_img_size(self, img_size)

    def adapt_input_channels(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's RGB stem convolution adapted to ``in_chans`` (timm's ``adapt_input_conv`` rule)."""
        return adapt_input_weights(state, ("stem.0.conv.weight",), self.config.in_chans)

    def _check_input(self, x: torch.Tensor) -> None:
        name = getattr(self, "variant_name", "MobileViT")
        check_images(x, self.config.in_chans, name)
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"{name} needs images of at least 32x32 (five stride-2 stages); got {tuple(x.shape[-2:])}")

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs ``B, C_i, H_i, W_i`` (strides 2, 4, 8, 16, 32; ``C_i = dims[i]``), with timm's semantics.

        ``indices``: stages to return (None: all, int n: the last n, or a list). ``stop_early``: run no stage past
        the last one returned. Returns ``(final, maps)``, or ``maps`` only when ``intermediates_only``; ``final``
        is ``forward_features``' map (after ``final_conv``) when every stage ran, else the last map computed. The
        maps are taken before ``final_conv`` and ``norm`` changes nothing.
        """
        take, last = take_indices(len(self.feature_info), indices, kept=len(self.stages))
        stages = self.stages[: last + 1] if stop_early else self.stages
        self._check_input(x)
        x = self.stem(x)
        features = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                features.append(to_format(x, output_fmt))
        if intermediates_only:
            return features
        return (self.final_conv(x) if len(stages) == len(self.feature_info) else x), features

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] | None = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last feature point in ``indices`` and, with ``prune_head``, the classifier and
        ``final_conv``, which only the classifier uses (timm's API); ``final_conv`` goes too when stages do. Returns
        the feature points in ``indices``, counted from 0. There is no final norm: ``prune_norm`` changes nothing."""
        take, last = take_indices(len(self.feature_info), indices, kept=len(self.stages))
        if prune_head or last + 1 < len(self.stages):
            self.final_conv = nn.Identity()
        self.stages = self.stages[: last + 1]
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map ``B, num_features, H / 32, W / 32``."""
        self._check_input(x)
        return self.final_conv(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))  # B, C, H, W -> B, C
        if pre_logits:
            return x
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _v1(
    stem: int,
    dims: tuple[int, ...],
    tdims: tuple[int, ...],
    tdepths: tuple[int, ...],
    expand: float,
    fusion: str = "concat",
) -> MobileViTConfig:
    return MobileViTConfig(
        stem_chs=stem,
        dims=dims,
        depths=(1, 3),
        transformer_dims=tdims,
        transformer_depths=tdepths,
        expand_ratio=expand,
        attention="mhsa",
        fusion=fusion,
        local_depthwise=fusion == "local_global",
        final_expansion=4,
    )


def _v2(width: float, fusion: str = "none") -> MobileViTConfig:
    """The width-multiplier rule of cvnets' ``config/mobilevit_v2.py`` (and MobileViTv3-v2's copy of it)."""

    def ch(value: float, divisor: int = 8) -> int:
        return make_divisible(value * width, divisor)

    stem = make_divisible(min(max(32 * width, 16), 64), 8, min_value=16)
    return MobileViTConfig(
        stem_chs=stem,
        dims=(ch(64, 16), ch(128), ch(256), ch(384), ch(512)),
        depths=(1, 2),
        transformer_dims=(ch(128), ch(192), ch(256)),
        transformer_depths=(2, 4, 3),
        expand_ratio=2.0,
        attention="separable",
        fusion=fusion,
        local_depthwise=True,
        final_expansion=0,
    )


# Official evaluation transforms (config/classification/imagenet/*.yaml): resize the short side to 288, centre
# crop 256, pixels in [0, 1] with no mean/std normalisation. cvnets v1 read images with OpenCV and feeds BGR; the
# published conversions of the v1 and v2 checkpoints (Hugging Face ``apple/mobilevit-*``, ``apple/mobilevitv2-*``
# preprocessor configs: ``do_flip_channel_order: true``) flip RGB to BGR for both, so both are BGR here.
_CROP = 256 / 288
_NO_NORM = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order="BGR")
_DATA_V1 = DataConfig(img_size=256, crop_pct=_CROP, interpolation="bilinear", **_NO_NORM)
_DATA_V2 = DataConfig(img_size=256, crop_pct=_CROP, interpolation="bicubic", **_NO_NORM)

# Where each number comes from. MACs are counted by ml-cvnets' profiler in all three papers and the v3 README;
# ``litevit.flops.count_macs(model, 256, convention="cvnets")`` reproduces that accounting (see litevit.flops).
_V1_PAPER = (
    "MobileViT paper (arXiv 2110.02178): top-1 (XS 74.8, S 78.4); params and XXS top-1 also in the apple/ml-cvnets "
    "model zoo (docs/source/en/general/README-model-zoo.md, 'MobileViTv1 (Legacy)': 1.3/2.3/5.6 M, XXS 69.0); "
    "MACs as quoted for MobileViTv1 in the MobileViTv3 paper (arXiv 2209.15159) comparison table, not read from a "
    "stored copy but equal (+-0.5 M) to ml-cvnets' profiler count of the v1 architecture"
)
_V2_PAPER = (
    "apple/ml-cvnets model zoo (docs/source/en/general/README-model-zoo.md, 'MobileViTv2 (256x256)'): params, top-1; "
    "MACs to 0.1 G as in the MobileViTv2 paper (arXiv 2206.02680), whose table could not be read from a stored copy: "
    "values as listed by timm's model cards and the EdgeTransformerBench README (2.0: 7.2 G there)"
)
_V3_PAPER = (
    "micronDLA/MobileViTv3 README, 'Classification / ImageNet-1K' table: accuracy, params (M), FLOPs (M, = MACs by "
    "ml-cvnets' profiler); arXiv 2209.15159"
)
_V3_L2_PAPER = (
    "micronDLA/MobileViTv3 README, 'ImageNet-1K using low-latency models' table (layer4 with 2 blocks instead of 4): "
    "accuracy, params (M), FLOPs (M, = MACs by ml-cvnets' profiler); arXiv 2209.15159"
)

_V1_XXS = ((16, 24, 48, 64, 80), (64, 80, 96))
_V1_XS = ((32, 48, 64, 80, 96), (96, 120, 144))
_V1_S = ((32, 64, 96, 128, 160), (144, 192, 240))
_V3_XXS = ((16, 24, 64, 80, 128), (64, 80, 96))
_V3_XS = ((32, 48, 96, 160, 160), (96, 120, 144))
_V3_S = ((32, 64, 128, 256, 320), (144, 192, 240))

# fmt: off
register("mobilevit_xxs", MobileViT, _v1(16, *_V1_XXS, (2, 4, 3), 2.0), Paper(1.3, 364, 69.0, 256, _V1_PAPER),
         _DATA_V1, ("mobilevit_xx_small", "mobilevit_xxs"))
register("mobilevit_xs", MobileViT, _v1(16, *_V1_XS, (2, 4, 3), 4.0), Paper(2.3, 986, 74.8, 256, _V1_PAPER),
         _DATA_V1, ("mobilevit_x_small", "mobilevit_xs"))
register("mobilevit_s", MobileViT, _v1(16, *_V1_S, (2, 4, 3), 4.0), Paper(5.6, 2009, 78.4, 256, _V1_PAPER),
         _DATA_V1, ("mobilevit_small", "mobilevit_s"))

for _width, _name, _params, _macs, _top1 in (
    (0.5, "050", 1.4, 500, 70.18), (0.75, "075", 2.9, 1000, 75.56), (1.0, "100", 4.9, 1800, 78.09),
    (1.25, "125", 7.5, 2800, 79.65), (1.5, "150", 10.6, 4000, 80.38), (1.75, "175", 14.3, 5500, 80.84),
    (2.0, "200", 18.4, 7200, 81.17),
):
    register(f"mobilevitv2_{_name}", MobileViT, _v2(_width), Paper(_params, _macs, _top1, 256, _V2_PAPER),
             _DATA_V2, (f"mobilevit_v2_{_width}", f"mobilevitv2_{_name}"))

register("mobilevitv3_xxs", MobileViT, _v1(16, *_V3_XXS, (2, 4, 3), 2.0, "local_global"),
         Paper(1.2, 289, 70.98, 256, _V3_PAPER), _DATA_V1, ("mobilevit_v3_xx_small_v3",))
register("mobilevitv3_xs", MobileViT, _v1(16, *_V3_XS, (2, 4, 3), 4.0, "local_global"),
         Paper(2.5, 927, 76.7, 256, _V3_PAPER), _DATA_V1, ("mobilevit_v3_x_small_v3",))
register("mobilevitv3_s", MobileViT, _v1(16, *_V3_S, (2, 4, 3), 4.0, "local_global"),
         Paper(5.8, 1841, 79.3, 256, _V3_PAPER), _DATA_V1, ("mobilevit_v3_small_v3",))
register("mobilevitv3_xxs_l2", MobileViT, _v1(16, *_V3_XXS, (2, 2, 3), 2.0, "local_global"),
         Paper(1.1, 256, 70.23, 256, _V3_L2_PAPER), _DATA_V1, ("mobilevit_v3_xx_small_v3_fast",))
register("mobilevitv3_xs_l2", MobileViT, _v1(16, *_V3_XS, (2, 2, 3), 4.0, "local_global"),
         Paper(2.3, 853, 76.10, 256, _V3_L2_PAPER), _DATA_V1, ("mobilevit_v3_x_small_v3_fast",))
register("mobilevitv3_s_l2", MobileViT, _v1(16, *_V3_S, (2, 2, 3), 4.0, "local_global"),
         Paper(5.2, 1651, 79.06, 256, _V3_L2_PAPER), _DATA_V1, ("mobilevit_v3_small_v3_fast",))

for _width, _name, _params, _macs, _top1 in (
    (0.5, "050", 1.4, 481, 72.33), (0.75, "075", 3.0, 1064, 76.55), (1.0, "100", 5.1, 1876, 78.64),
):
    register(f"mobilevitv3_{_name}", MobileViT, _v2(_width, "local_global"),
             Paper(_params, _macs, _top1, 256, _V3_PAPER), _DATA_V2, (f"mobilevit_v3_{_width}",))
# fmt: on
