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

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import BNLinear, ConvBN, Residual, check_images, halve, make_divisible, resample_table, to_2tuple
from ..registry import DataConfig, Paper, register
from . import efficientvit_msra_convert
from .features import take_indices, to_format


@dataclass(frozen=True)
class EfficientViTConfig:
    dims: tuple[int, ...] = (64, 128, 192)  # C_i: width of each stage
    depths: tuple[int, ...] = (1, 2, 3)  # L_i: sandwich blocks per stage
    num_heads: tuple[int, ...] = (4, 4, 4)  # H_i: attention heads per stage; each head sees C_i / H_i channels
    key_dim: int = 16  # D_q/k: query and key width per head (the value width is C_i / H_i)
    window_size: tuple[int, ...] = (7, 7, 7)  # side of the local attention window per stage
    kernels: tuple[int, ...] = (5, 5, 5, 5)  # kernel of the depthwise conv on the queries of head i
    mlp_ratio: float = 2.0  # FFN hidden width = mlp_ratio * C_i
    merge_ratio: float = 4.0  # hidden width of the subsample block's inverted residual = merge_ratio * C_i
    se_ratio: float = 0.25  # squeeze-excite reduction inside the subsample block
    drop_path: float = 0.0  # stochastic depth on every residual
    num_classes: int = 1000
    img_size: int | tuple[int, int] = 224  # sets the attention windows (and nothing else)
    in_chans: int = 3


class FFN(nn.Module):
    """1x1 Conv+BN, ReLU, 1x1 Conv+BN: the feed-forward layer of the sandwich block (Sec. 3.1)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.pw1 = ConvBN(dim, hidden)
        self.act = nn.ReLU()
        self.pw2 = ConvBN(hidden, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))


class CascadedGroupAttention(nn.Module):
    """Cascaded group attention over one window (Sec. 3.2, Eq. 2-3).

    Head ``i`` projects its own channel split ``X_i`` plus the output of head ``i - 1`` to Q, K, V; its queries go
    through a depthwise convolution (kernel ``kernels[i]``); attention adds a learned per-head bias indexed by the
    ``|dy|, |dx|`` offset of query and key inside the window. The heads' outputs are concatenated and projected
    back (ReLU, 1x1 Conv+BN). Inputs are windows ``B, C, h, w`` with ``h <= window[0]`` and ``w <= window[1]``.
    """

    def __init__(
        self, dim: int, key_dim: int, num_heads: int, window: tuple[int, int], kernels: tuple[int, ...]
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if len(kernels) < num_heads:
            raise ValueError(f"kernels {kernels} give no query kernel for each of the {num_heads} heads")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = dim // num_heads  # equals the split width, so head i's output adds onto split i + 1
        self.scale = key_dim**-0.5
        self.window = window
        self.qkvs = nn.ModuleList(ConvBN(self.val_dim, 2 * key_dim + self.val_dim) for _ in range(num_heads))
        self.dws = nn.ModuleList(ConvBN(key_dim, key_dim, kernels[i], groups=key_dim) for i in range(num_heads))
        self.act = nn.ReLU()
        self.proj = ConvBN(self.val_dim * num_heads, dim, bn_weight_init=0.0)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, *window))
        self.register_buffer("attention_bias_idxs", self._bias_index(), persistent=False)
        self.register_buffer("fused_bias", None)

    def _bias_index(self) -> torch.Tensor:
        height, width = self.window
        points = list(itertools.product(range(height), range(width)))
        idx = [abs(qy - ky) * width + abs(qx - kx) for qy, qx in points for ky, kx in points]
        return torch.tensor(idx, dtype=torch.long).view(len(points), len(points))

    def attention_bias(self, height: int, width: int) -> torch.Tensor:
        """Per-head bias ``(heads, h * w, h * w)`` for an ``h`` x ``w`` window (a sub-window of ``self.window``)."""
        if self.fused_bias is not None:
            bias = self.fused_bias
        else:
            bias = self.attention_biases.flatten(1)[:, self.attention_bias_idxs]
        if (height, width) == self.window:
            return bias
        # the points of the smaller window are the top-left corner of the full one: y * window_w + x
        rows = torch.arange(height, device=bias.device)[:, None] * self.window[1]
        sel = (rows + torch.arange(width, device=bias.device)[None, :]).flatten()
        return bias[:, sel][:, :, sel]

    def heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every head, each ``B, C / heads, h, w``, before concatenation and projection."""
        B, _, H, W = x.shape
        kd = self.key_dim
        bias = self.attention_bias(H, W)
        splits = x.chunk(self.num_heads, dim=1)
        outputs = []
        feat = splits[0]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws, strict=True)):
            if i > 0:
                feat = feat + splits[i]  # the cascade: previous head's output refines this head's input
            q, k, v = qkv(feat).split([kd, kd, self.val_dim], dim=1)  # B, d, h, w each
            q = dw(q)
            q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)  # B, d, h, w -> B, d, N
            attn = (q.transpose(1, 2) @ k) * self.scale + bias[i]  # B, N, N
            feat = (v @ attn.softmax(dim=-1).transpose(1, 2)).view(B, self.val_dim, H, W)  # B, d, N -> B, d, h, w
            outputs.append(feat)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(torch.cat(self.heads(x), dim=1)))

    @torch.no_grad()
    def fuse(self) -> CascadedGroupAttention:
        """Fold BatchNorms, gather the bias table once and fold the query scale into the key projection."""
        if self.fused_bias is not None:
            return self  # already fused: fusing again must not scale the keys twice
        fused = copy.deepcopy(self)
        for group in (fused.qkvs, fused.dws):
            for i, layer in enumerate(group):
                if isinstance(layer, ConvBN):
                    group[i] = layer.fuse()
        if isinstance(fused.proj, ConvBN):
            fused.proj = fused.proj.fuse()
        kd = self.key_dim
        for qkv in fused.qkvs:
            # output channels [kd, 2 kd) are the keys: (q * s)^T k == q^T (k * s)
            qkv.weight[kd : 2 * kd] *= self.scale
            qkv.bias[kd : 2 * kd] *= self.scale
        fused.scale = 1.0
        fused.fused_bias = self.attention_bias(*self.window).detach().clone()
        del fused.attention_biases
        return fused

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, key_dim={self.key_dim}, val_dim={self.val_dim}, window={self.window}"


class LocalWindowAttention(nn.Module):
    """Cascaded group attention applied in non-overlapping windows, padding the map to a window multiple."""

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int,
        window: tuple[int, int],
        kernels: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.window = window
        self.attn = CascadedGroupAttention(dim, key_dim, num_heads, window, kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        wh, ww = min(self.window[0], H), min(self.window[1], W)
        if (H, W) == (wh, ww):  # one window covers the map
            return self.attn(x)
        pad_b, pad_r = -H % wh, -W % ww
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        pH, pW = H + pad_b, W + pad_r
        nh, nw = pH // wh, pW // ww
        # B, C, nh*wh, nw*ww -> B, nh, nw, C, wh, ww -> B*nh*nw, C, wh, ww
        x = x.view(B, C, nh, wh, nw, ww).permute(0, 2, 4, 1, 3, 5).reshape(B * nh * nw, C, wh, ww)
        x = self.attn(x)
        # B*nh*nw, C, wh, ww -> B, C, nh, wh, nw, ww -> B, C, pH, pW
        x = x.view(B, nh, nw, C, wh, ww).permute(0, 3, 1, 4, 2, 5).reshape(B, C, pH, pW)
        if pad_b or pad_r:
            x = x[:, :, :H, :W].contiguous()
        return x

    def extra_repr(self) -> str:
        return f"window={self.window}"


def _dw_conv(dim: int, bn_weight_init: float = 1.0) -> ConvBN:
    return ConvBN(dim, dim, 3, groups=dim, bn_weight_init=bn_weight_init)


class EfficientViTBlock(nn.Module):
    """The sandwich block (Sec. 3.1, Fig. 6b): DWConv, FFN, cascaded group attention, DWConv, FFN, each residual."""

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], config: EfficientViTConfig) -> None:
        super().__init__()
        hidden, p = int(dim * config.mlp_ratio), config.drop_path
        self.dw0 = Residual(_dw_conv(dim, bn_weight_init=0.0), p)
        self.ffn0 = Residual(FFN(dim, hidden), p)
        self.mixer = Residual(LocalWindowAttention(dim, config.key_dim, num_heads, window, config.kernels), p)
        self.dw1 = Residual(_dw_conv(dim, bn_weight_init=0.0), p)
        self.ffn1 = Residual(FFN(dim, hidden), p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x)))))


class ConvFFN(nn.Sequential):
    """Residual depthwise conv then residual FFN: the token interaction + FFN half of a sandwich (Sec. 3.3)."""

    def __init__(self, dim: int, config: EfficientViTConfig) -> None:
        super().__init__()
        self.dw = Residual(_dw_conv(dim), config.drop_path)
        self.ffn = Residual(FFN(dim, int(dim * config.mlp_ratio)), config.drop_path)


class SqueezeExcite(nn.Module):
    """Channel gate: global average, 1x1 conv, ReLU, 1x1 conv, sigmoid (Hu et al. 2018)."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))  # B, C, 1, 1
        return x * gate.sigmoid()


class PatchMerging(nn.Module):
    """Inverted residual that halves the resolution: 1x1 expand, 3x3 stride-2 depthwise, SE, 1x1 project."""

    def __init__(self, dim: int, out_dim: int, config: EfficientViTConfig) -> None:
        super().__init__()
        hidden = int(dim * config.merge_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.act = nn.ReLU()
        self.conv2 = ConvBN(hidden, hidden, 3, stride=2, groups=hidden)
        self.se = SqueezeExcite(hidden, make_divisible(hidden * config.se_ratio, 8, round_limit=0.0))
        self.conv3 = ConvBN(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.se(self.act(self.conv2(self.act(self.conv1(x))))))


class Subsample(nn.Sequential):
    """The subsample block between stages (Sec. 3.3): DWConv+FFN, patch merging, DWConv+FFN."""

    def __init__(self, dim: int, out_dim: int, config: EfficientViTConfig) -> None:
        super().__init__()
        self.pre = ConvFFN(dim, config)
        self.merge = PatchMerging(dim, out_dim, config)
        self.post = ConvFFN(out_dim, config)


class EfficientViTStage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[nn.Module], resolution: tuple[int, int]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.resolution = resolution  # feature map of this stage at the configured img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class EfficientViT(nn.Module):
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
