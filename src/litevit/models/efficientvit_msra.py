"""EfficientViT (MSRA): Memory Efficient Vision Transformer with Cascaded Group Attention.

Liu, Peng, Zheng, Yang, Hu, Yuan. CVPR 2023. arXiv:2305.07027.
Official code: https://github.com/microsoft/Cream/tree/main/EfficientViT (``classification/model/efficientvit.py``);
timm port ``timm/models/efficientvit_msra.py``.

This is *not* the EfficientViT of Cai et al. (MIT Han Lab, "EfficientViT: Multi-Scale Linear Attention for
High-Resolution Dense Prediction", arXiv:2205.14756), an unrelated model that happens to share the name.

Differences from the official code:
- the network is organised as three stages, each ``downsample`` (the subsample block of Sec. 3.3: a depthwise
  conv + FFN pair, the inverted-residual patch merging, another pair) followed by ``blocks``, as in timm; the
  official code keeps three flat ``blocks1..3`` lists with the subsample block at the head of the next list.
  The computation is identical and :mod:`litevit.models.efficientvit_msra_convert` renames the keys;
- windows may be rectangular: a stage's window is ``min(window_size, H)`` by ``min(window_size, W)`` of the
  feature map at the configured ``img_size`` (the official code only builds square inputs), and at run time a
  map smaller than the window uses the sub-window and the bias entries of the offsets it contains, so any input
  size runs; the bias table is stored as ``(heads, window_h, window_w)`` (official: flattened, square);
- the attention-bias index is rebuilt by the model and never read from checkpoints (offset ``|dy|, |dx|`` at
  index ``|dy| * window_w + |dx|``, equal to the official enumeration for square windows);
- the biases are gathered on every forward in the trainable model and precomputed only by ``litevit.fuse``
  (which also folds the ``D ** -0.5`` scale into the key projection), so no cached table can go stale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..layers import (
    BNLinear,
    ConvBN,
    StagedBlocks,
    adapt_input_weights,
    check_images,
    halve,
    resample_table,
    set_img_size,
    to_2tuple,
)
from ..registry import DataConfig, Paper, register
from . import efficientvit_msra_convert
from .efficientvit_msra_blocks import (
    CascadedGroupAttention,
    EfficientViTBlock,
    EfficientViTConfig,
    LocalWindowAttention,
    Subsample,
)
from .features import take_indices, to_format

__all__ = ["CascadedGroupAttention", "EfficientViT", "EfficientViTConfig", "LocalWindowAttention"]


class EfficientViTStage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[nn.Module], resolution: tuple[int, int]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.resolution = resolution  # feature map of this stage at the configured img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class EfficientViT(StagedBlocks, nn.Module):
    """EfficientViT (MSRA): overlapping patch embedding to 1/16, three stages of sandwich blocks, BN+Linear head."""

    family = "efficientvit_msra"
    converter = efficientvit_msra_convert  # reads the official and timm checkpoint layouts

    head_prefixes = ("head.",)

    def __init__(self, config: EfficientViTConfig) -> None:
        super().__init__()
        self.config = config
        dims = config.dims
        if not (len(dims) == len(config.depths) == len(config.num_heads) == len(config.window_size)):
            raise ValueError(f"dims, depths, num_heads and window_size must have equal lengths, got {config}")
        c = dims[0]
        self.stem = nn.Sequential(  # Sec. 3.3: four 3x3 stride-2 convolutions, 3 -> C/8 -> C/4 -> C/2 -> C
            ConvBN(config.in_chans, c // 8, 3, 2),
            nn.ReLU(),
            ConvBN(c // 8, c // 4, 3, 2),
            nn.ReLU(),
            ConvBN(c // 4, c // 2, 3, 2),
            nn.ReLU(),
            ConvBN(c // 2, c, 3, 2),
        )
        self.img_size = to_2tuple(config.img_size)
        resolution = tuple(halve(halve(halve(halve(n)))) for n in self.img_size)
        stages = []
        for i, (dim, depth, heads, win) in enumerate(
            zip(dims, config.depths, config.num_heads, config.window_size, strict=True)
        ):
            downsample: nn.Module = nn.Identity()
            if i > 0:
                downsample = Subsample(dims[i - 1], dim, config)
                resolution = (halve(resolution[0]), halve(resolution[1]))
            window = (min(win, resolution[0]), min(win, resolution[1]))
            blocks = [EfficientViTBlock(dim, heads, window, config) for _ in range(depth)]
            stages.append(EfficientViTStage(downsample, blocks, resolution))
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=dim, reduction=16 * 2**i, module=f"stages.{i}") for i, dim in enumerate(dims)]
        self.num_features = dims[-1]
        self.head: nn.Module
        self.reset_classifier(config.num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: no classifier, features out)."""
        self.head = BNLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Rebuild in place for another input size, as loading these weights at ``img_size`` would: the attention
        windows follow the new maps and their bias tables are resampled (bicubic over offsets)."""
        if any(isinstance(m, CascadedGroupAttention) and m.fused_bias is not None for m in self.modules()):
            raise ValueError("a fused EfficientViT holds its biases for one window; set the input size before fusing")
        self.img_size = to_2tuple(img_size)
        resolution = tuple(halve(halve(halve(halve(n)))) for n in self.img_size)
        for i, (stage, win) in enumerate(zip(self.stages, self.config.window_size, strict=False)):
            if i > 0:
                resolution = (halve(resolution[0]), halve(resolution[1]))
            stage.resolution = resolution
            for block in stage.blocks:
                block.mixer.m.set_window((min(win, resolution[0]), min(win, resolution[1])))
        set_img_size(self, img_size)

    def adapt_input_channels(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's RGB stem convolution adapted to ``in_chans`` (timm's ``adapt_input_conv`` rule)."""
        return adapt_input_weights(state, ("stem.0.conv.weight",), self.config.in_chans)

    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if "attention_biases" in name}

    def _check_input(self, x: torch.Tensor) -> None:
        name = getattr(self, "variant_name", "EfficientViT")
        check_images(x, self.config.in_chans, name)
        if x.shape[-2] < 1 or x.shape[-1] < 1:
            raise ValueError(f"{name} expects images of at least 1x1 pixels; got {x.shape[-2]}x{x.shape[-1]}")

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs ``B, C_i, H_i, W_i`` (1/16, 1/32, 1/64 of the input), with timm's semantics.

        ``indices``: stages to return (None: all, int n: the last n, or a list). ``stop_early``: run no stage past
        the last one returned. Returns ``(final, maps)``, ``final`` being the last map computed (the output of
        ``forward_features`` after the full network), or ``maps`` only when ``intermediates_only``. There is no
        final norm: ``norm`` changes nothing.
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
        return features if intermediates_only else (x, features)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] | None = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last feature point in ``indices`` and, with ``prune_head``, the classifier
        (timm's API). Returns the feature points in ``indices``, counted from 0. There is no final norm:
        ``prune_norm`` changes nothing."""
        take, last = take_indices(len(self.feature_info), indices, kept=len(self.stages))
        self.stages = self.stages[: last + 1]
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of the last stage, ``B, C, H, W``."""
        self._check_input(x)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))  # B, C, H, W -> B, C
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def adapt_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Resample the attention-bias tables of windows whose size differs from this model's (bicubic)."""
        state = dict(state)
        for name, module in self.named_modules():
            key = f"{name}.attention_biases"
            if not isinstance(module, CascadedGroupAttention) or key not in state:
                continue
            table = state[key]
            if table.ndim == 3 and table.shape[0] == module.num_heads and tuple(table.shape[1:]) != module.window:
                state[key] = resample_table(table, module.window)
        return state


_PAPER = (
    "official EfficientViT classification README, model zoo (top-1, FLOPs = MACs, params at 224); "
    "throughput as stated in the official READMEs"
)
# official evaluation transform: resize the short side to 256/224 of the crop (bicubic), centre-crop, ImageNet stats
_DATA = DataConfig(img_size=224, crop_pct=0.875, interpolation="bicubic")
_GPU = "GPU V100, batch 2048 (official README)"


def _config(
    dims: tuple[int, ...], depths: tuple[int, ...], heads: tuple[int, ...], kernels: tuple[int, ...]
) -> EfficientViTConfig:
    return EfficientViTConfig(dims=dims, depths=depths, num_heads=heads, kernels=kernels)


register(
    "efficientvit_m0",
    EfficientViT,
    _config((64, 128, 192), (1, 2, 3), (4, 4, 4), (5, 5, 5, 5)),
    Paper(
        2.3,
        79,
        63.2,
        224,
        _PAPER,
        {_GPU: 27644, "CPU Intel (official README)": 228.4, "ONNX (official README)": 340.1},
    ),
    _DATA,
    ("EfficientViT_M0", "efficientvit_m0"),
)
register(
    "efficientvit_m1",
    EfficientViT,
    _config((128, 144, 192), (1, 2, 3), (2, 3, 3), (7, 5, 3, 3)),
    Paper(3.0, 167, 68.4, 224, _PAPER, {_GPU: 20093}),
    _DATA,
    ("EfficientViT_M1", "efficientvit_m1"),
)
register(
    "efficientvit_m2",
    EfficientViT,
    _config((128, 192, 224), (1, 2, 3), (4, 3, 2), (7, 5, 3, 3)),
    Paper(4.2, 201, 70.8, 224, _PAPER, {_GPU: 18218}),
    _DATA,
    ("EfficientViT_M2", "efficientvit_m2"),
)
register(
    "efficientvit_m3",
    EfficientViT,
    _config((128, 240, 320), (1, 2, 3), (4, 3, 4), (5, 5, 5, 5)),
    Paper(6.9, 263, 73.4, 224, _PAPER, {_GPU: 16644}),
    _DATA,
    ("EfficientViT_M3", "efficientvit_m3"),
)
register(
    "efficientvit_m4",
    EfficientViT,
    _config((128, 256, 384), (1, 2, 3), (4, 4, 4), (7, 5, 3, 3)),
    Paper(8.8, 299, 74.3, 224, _PAPER, {_GPU: 15914}),
    _DATA,
    ("EfficientViT_M4", "efficientvit_m4"),
)
register(
    "efficientvit_m5",
    EfficientViT,
    _config((192, 288, 384), (1, 3, 4), (3, 3, 4), (7, 5, 3, 3)),
    Paper(12.4, 522, 77.1, 224, _PAPER, {_GPU: 10621}),
    _DATA,
    ("EfficientViT_M5", "efficientvit_m5"),
)
