"""MobileViT's building blocks, v1 to v3: the config, inverted residuals, both attentions and the MobileViT block.

The network built from them, its version table and its differences from the official code are described in
:mod:`litevit.models.mobilevit`.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import (
    ConvBN,
    SplitLayer,
    channel_groups,
    drop_path,
    fold_norm_affine,
    make_divisible,
    qkv_heads,
    split_scaled_qkv,
)

ATTENTIONS = ("mhsa", "separable")


FUSIONS = ("concat", "none", "local_global")


@dataclass(frozen=True)
class MobileViTConfig:
    stem_chs: int = 16  # channels of the 3x3 stride-2 stem
    dims: tuple[int, ...] = (16, 24, 48, 64, 80)  # C: output channels of layer_1 .. layer_5
    depths: tuple[int, ...] = (1, 3)  # MV2 blocks in layer_1 and layer_2 (layer_3..5: one stride-2 MV2 + one block)
    transformer_dims: tuple[int, ...] = (64, 80, 96)  # d: transformer width in layer_3 .. layer_5
    transformer_depths: tuple[int, ...] = (2, 4, 3)  # L: transformer layers in layer_3 .. layer_5
    expand_ratio: float = 2.0  # MV2 expansion (hidden = make_divisible(C_in * ratio, 8))
    mlp_ratio: float = 2.0  # transformer FFN width = mlp_ratio * d
    num_heads: int = 4  # heads of the v1 multi-head attention (the official configs set ``number_heads: 4``)
    patch_size: int = 2  # h = w: patch side for unfolding
    kernel_size: int = 3  # n: the local conv (and the v1 fusion conv)
    attention: str = "mhsa"  # "mhsa" (v1, LayerNorm on tokens) or "separable" (v2, GroupNorm(1) on B, C, P, N)
    fusion: str = "concat"  # "concat" (v1), "none" (v2) or "local_global" (v3: 1x1 fusion + input residual)
    local_depthwise: bool = False  # depthwise n x n local conv (v2 and v3) instead of a full conv (v1)
    final_expansion: int = 4  # last 1x1 conv to min(factor * C_5, 960) channels; 0: none (v2 networks)
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path: float = 0.0  # stochastic depth on the transformer and MV2 residuals
    num_classes: int = 1000
    img_size: int | tuple[int, int] = 256
    in_chans: int = 3


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """Conv+BN, followed by SiLU when ``act``; the fuse walker turns ``[0]`` into a plain conv."""
    layers: list[nn.Module] = [ConvBN(in_channels, out_channels, kernel_size, stride, groups=groups)]
    if act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def _patches(x: torch.Tensor, patch: int) -> tuple[int, int]:
    """Patches down and across ``x`` (``B, C, H, W``), whose sides must be multiples of the patch."""
    H, W = x.shape[-2:]
    if H % patch or W % patch:
        raise ValueError(f"unfold needs sides that are multiples of the patch {patch}; got {H}x{W}")
    return H // patch, W // patch


def unfold(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``B, C, H, W -> B, C, P, N``: P = patch * patch pixel positions, N = (H / patch) * (W / patch) patches."""
    B, C = x.shape[:2]
    nh, nw = _patches(x, patch)
    # B, C, H, W -> B, C, nh, ph, nw, pw -> B, C, ph, pw, nh, nw
    x = x.reshape(B, C, nh, patch, nw, patch).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(B, C, patch * patch, nh * nw)  # B, C, P, N


def fold(x: torch.Tensor, patch: int, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`unfold`: ``B, C, P, N -> B, C, H, W``."""
    B, C = x.shape[:2]
    nh, nw = size[0] // patch, size[1] // patch
    # B, C, P, N -> B, C, ph, pw, nh, nw -> B, C, nh, ph, nw, pw
    x = x.reshape(B, C, patch, patch, nh, nw).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(B, C, nh * patch, nw * patch)  # B, C, H, W


def unfold_tokens(x: torch.Tensor, patch: int) -> torch.Tensor:
    """:func:`unfold` then tokens last, in one permutation: ``B, C, H, W -> B*P, N, C`` (v1's attention input)."""
    B, C = x.shape[:2]
    nh, nw = _patches(x, patch)
    # B, C, nh, ph, nw, pw -> B, ph, pw, nh, nw, C
    x = x.reshape(B, C, nh, patch, nw, patch).permute(0, 3, 5, 2, 4, 1)
    return x.reshape(B * patch * patch, nh * nw, C)  # B*P, N, C


def fold_tokens(x: torch.Tensor, patch: int, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`unfold_tokens`: ``B*P, N, C -> B, C, H, W``."""
    C = x.shape[-1]
    nh, nw = size[0] // patch, size[1] // patch
    # B, ph, pw, nh, nw, C -> B, C, nh, ph, nw, pw
    x = x.reshape(-1, patch, patch, nh, nw, C).permute(0, 5, 3, 1, 4, 2)
    return x.reshape(-1, C, nh * patch, nw * patch)  # B, C, H, W


class InvertedResidual(nn.Module):
    """MobileNetV2 block (MV2 in the MobileViT papers, Fig. 1b): 1x1 expand, n x n depthwise, 1x1 linear project."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expand_ratio: float, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        hidden = make_divisible(int(round(in_channels * expand_ratio)), 8)
        self.expand = conv_bn(in_channels, hidden) if expand_ratio != 1 else nn.Identity()
        self.dw = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = conv_bn(hidden, out_channels, act=False)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.dw(self.expand(x)))
        if self.residual:
            return x + drop_path(out, self.drop_path, self.training)
        return out

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class Attention(nn.Module):
    """Multi-head self-attention among the patches that share a pixel position (v1, Sec. 3.1)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"transformer width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = qkv_heads(self.qkv(x), self.num_heads)  # B, heads, N, C / heads each
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))  # B, heads, N, c -> B, N, C

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, scale={self.scale:.4g}"


class SeparableAttention(nn.Module):
    """Separable self-attention (v2, Sec. 3.2), linear in the number of patches N, on ``B, d, P, N``.

    One context score per token (softmax over N) weights the keys into a context vector per pixel position,
    which scales ReLU(values) element-wise.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.qkv = nn.Conv2d(dim, 1 + 2 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value = channel_groups(self.qkv(x), [1, self.dim, self.dim])  # B, 1|d|d, P, N
        scores = query.softmax(dim=-1)  # B, 1, P, N
        context = (key * scores).sum(dim=-1, keepdim=True)  # B, d, P, 1
        return self.proj(F.relu(value) * context)


def _mlp(dim: int, hidden: int, conv: bool) -> nn.Sequential:
    fc = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
    return nn.Sequential(OrderedDict(fc1=fc(dim, hidden), act=nn.SiLU(), fc2=fc(hidden, dim)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer layer: attention then FFN, each ``x + f(norm(x))``.

    v1 (``mhsa``): tokens ``B*P, N, d`` with LayerNorm. v2 (``separable``): ``B, d, P, N`` with GroupNorm(1),
    1x1 convs as the linear layers (as the official code has them).
    """

    def __init__(self, dim: int, mlp_ratio: float, attention: str, num_heads: int, drop_path: float = 0.0) -> None:
        super().__init__()
        separable = attention == "separable"
        self.norm1 = nn.GroupNorm(1, dim) if separable else nn.LayerNorm(dim)
        self.attn = SeparableAttention(dim) if separable else Attention(dim, num_heads)
        self.norm2 = nn.GroupNorm(1, dim) if separable else nn.LayerNorm(dim)
        hidden = int(mlp_ratio * dim) // 16 * 16 if separable else int(mlp_ratio * dim)  # cvnets rounds v2 to 16
        self.mlp = _mlp(dim, hidden, conv=separable)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)

    @torch.no_grad()
    def fuse(self) -> TransformerBlock:
        """Fold both norms' affine terms into qkv / fc1 and the attention scale into the query rows; query, key and
        value become separate layers (no split node in an exported graph)."""
        fused = copy.deepcopy(self)
        fused.drop_path = 0.0
        fold_norm_affine(fused.norm1, fused.attn.qkv)
        fold_norm_affine(fused.norm2, fused.mlp.fc1)
        attn = fused.attn
        if isinstance(attn, Attention) and isinstance(attn.qkv, nn.Linear):
            attn.qkv, attn.scale = split_scaled_qkv(attn.qkv, attn.scale), 1.0
        elif isinstance(attn, SeparableAttention) and isinstance(attn.qkv, nn.Conv2d):
            attn.qkv = SplitLayer.from_layer(attn.qkv, [1, attn.dim, attn.dim])
        return fused


class MobileViTBlock(nn.Module):
    """The MobileViT block (v1 Sec. 3.1, Fig. 1b), with the v2 (Sec. 3.3) and v3 (Sec. 3.1) changes as options.

    Local n x n conv and 1x1 to width d; unfold into patch x patch patches; L transformer layers across patches;
    norm; fold; 1x1 back to C; then the version's fusion. Feature maps whose sides are not multiples of the patch
    are resized bilinearly as the official code does: v1 resizes the local features and resizes the folded map
    back (``align_corners=False``); v2 resizes the block input (``align_corners=True``) and keeps that size.
    """

    def __init__(self, dim: int, transformer_dim: int, depth: int, config: MobileViTConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.fusion_type = config.fusion
        self.separable = config.attention == "separable"
        k = config.kernel_size
        self.local_conv = conv_bn(dim, dim, k, groups=dim if config.local_depthwise else 1)
        self.local_proj = nn.Conv2d(dim, transformer_dim, 1, bias=False)
        self.transformer = nn.Sequential(
            *[
                TransformerBlock(
                    transformer_dim, config.mlp_ratio, config.attention, config.num_heads, config.drop_path
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.GroupNorm(1, transformer_dim) if self.separable else nn.LayerNorm(transformer_dim)
        self.fusion: nn.Module | None = None
        if self.separable:
            # v2: 1x1 projection without activation; v3 feeds it cat(global, local)
            proj_in = 2 * transformer_dim if config.fusion == "local_global" else transformer_dim
            self.conv_proj = conv_bn(proj_in, dim, act=False)
        else:
            self.conv_proj = conv_bn(transformer_dim, dim)
            if config.fusion == "concat":  # v1: n x n conv on cat(input, global)
                self.fusion = conv_bn(2 * dim, dim, k)
            elif config.fusion == "local_global":  # v3: 1x1 conv on cat(local, global)
                self.fusion = conv_bn(transformer_dim + dim, dim)

    def _global(self, local: torch.Tensor) -> torch.Tensor:
        """Unfold, transformer, norm, fold: ``B, d, H, W -> B, d, H, W`` (sides multiples of the patch)."""
        size = (local.shape[-2], local.shape[-1])
        p = self.patch_size
        if self.separable:
            return fold(self.norm(self.transformer(unfold(local, p))), p, size)  # B, d, P, N in between
        return fold_tokens(self.norm(self.transformer(unfold_tokens(local, p))), p, size)  # B*P, N, d in between

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        return math.ceil(height / p) * p, math.ceil(width / p) * p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        grid = self._grid(*size)
        if self.separable:
            if grid != size:
                x = F.interpolate(x, size=grid, mode="bilinear", align_corners=True)
            local = self.local_proj(self.local_conv(x))
            glob = self._global(local)
            if self.fusion_type == "local_global":
                return x + self.conv_proj(torch.cat((glob, local), dim=1))
            return self.conv_proj(glob)
        local = self.local_proj(self.local_conv(x))
        resized = local if grid == size else F.interpolate(local, size=grid, mode="bilinear", align_corners=False)
        glob = self._global(resized)
        if grid != size:
            glob = F.interpolate(glob, size=size, mode="bilinear", align_corners=False)
        glob = self.conv_proj(glob)
        if self.fusion_type == "concat":
            return self.fusion(torch.cat((x, glob), dim=1))
        if self.fusion_type == "local_global":
            return x + self.fusion(torch.cat((local, glob), dim=1))
        return glob

    @torch.no_grad()
    def fuse(self) -> MobileViTBlock:
        """Fold the final norm's affine into the (already fused) 1x1 projection: fold and resizing commute with it."""
        fused = copy.deepcopy(self)
        proj = fused.conv_proj[0]
        if not isinstance(proj, nn.Conv2d):
            proj = proj.fuse()
            fused.conv_proj[0] = proj
        fold_norm_affine(fused.norm, proj, slice(0, self.local_proj.out_channels))
        return fused
