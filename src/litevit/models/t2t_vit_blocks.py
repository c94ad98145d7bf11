"""T2T-ViT's building blocks: the config, the tokens-to-token module (soft split, performer and token transformer)
and the backbone's attention block. The network and its differences from the official code are in
:mod:`litevit.models.t2t_vit`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import drop_path


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """The fixed position table of "Attention is all you need": ``(1, num_positions, dim)``, float32.

    Entry ``(p, j)`` is ``sin`` (even ``j``) or ``cos`` (odd ``j``) of ``p / 10000 ** (2 * (j // 2) / dim)``.
    """
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * torch.div(torch.arange(dim), 2, rounding_mode="floor").to(torch.float64) / dim
    angle = position / torch.pow(10000.0, exponent)  # positions, dim
    table = torch.where(torch.arange(dim) % 2 == 0, angle.sin(), angle.cos())
    return table.to(torch.float32)[None]


@dataclass(frozen=True)
class T2TViTConfig:
    embed_dim: int = 384  # C: width of the backbone tokens ("hidden dim" in Table 1)
    depth: int = 14  # b: number of backbone transformer blocks
    num_heads: int = 6  # heads of every backbone block
    mlp_ratio: float = 3.0  # MLP hidden width = mlp_ratio * C
    qkv_bias: bool = False  # bias on the backbone's qkv projection
    qk_scale: float | None = None  # backbone attention scale; None: head_dim ** -0.5 (the official evaluation)
    tokens_type: str = "performer"  # re-structurization layer of the T2T module: "performer" or "transformer"
    token_dim: int = 64  # C': width of the tokens inside the T2T module
    kernel_sizes: tuple[int, ...] = (7, 3, 3)  # k: soft-split kernels (Sec. 3.1, Eq. 3)
    strides: tuple[int, ...] = (4, 2, 2)  # k - s is the overlap of neighbouring patches
    paddings: tuple[int, ...] = (2, 1, 1)  # p: zero padding of each soft split
    kernel_ratio: float = 0.5  # performer: random features m = kernel_ratio * C'
    t2t_mlp_ratio: float = 1.0  # MLP hidden width of the T2T layers = t2t_mlp_ratio * C'
    t2t_dropout: float = 0.1  # performer dropout after attention and MLP (hard-coded 0.1 in the official code)
    drop_rate: float = 0.0  # dropout on positions, projections and MLPs of the backbone (main.py --drop)
    drop_path: float = 0.1  # stochastic depth of the last block, linear from 0 (main.py --drop-path)
    num_classes: int = 1000
    img_size: int | tuple[int, int] = 224
    in_chans: int = 3


class SoftSplit(nn.Module):
    """Soft split (Sec. 3.1): overlapping ``k x k`` patches of a ``B, C, H, W`` map become ``B, N, C*k*k`` tokens."""

    def __init__(self, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        height, width = ((n + 2 * self.padding - self.kernel_size) // self.stride + 1 for n in size)
        return height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # B, C, H, W -> B, C*k*k, N -> B, N, C*k*k (channel-major within a patch, as nn.Unfold)
        return F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Mlp(nn.Module):
    """Linear, GELU, Linear, with dropout on the hidden activations and on the output."""

    def __init__(self, dim: int, hidden: int, hidden_drop: float = 0.0, out_drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(hidden_drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(out_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class TokenPerformer(nn.Module):
    """Re-structurization with a single-head Performer layer (Sec. 3.1; Choromanski et al., FAVOR+).

    Softmax attention is approximated with ``m`` positive random features ``phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)``;
    the token width changes from ``dim`` to ``out_dim``, so the skip connection is taken from the values.
    """

    def __init__(self, dim: int, out_dim: int, kernel_ratio: float, mlp_ratio: float, drop: float) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.num_features = int(out_dim * kernel_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.kqv = nn.Linear(dim, 3 * out_dim)  # keys, queries, values, in this order
        self.proj = nn.Linear(out_dim, out_dim)
        self.drop = nn.Dropout(drop)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio), out_drop=drop)  # official: dropout after fc2 only
        self.epsilon = 1e-8  # keeps the normaliser away from zero
        # orthogonal rows scaled to norm sqrt(m); drawn once, frozen, saved in the checkpoint
        features = nn.init.orthogonal_(torch.empty(self.num_features, out_dim)) * math.sqrt(self.num_features)
        self.random_features = nn.Parameter(features, requires_grad=False)

    def kernel_features(self, x: torch.Tensor) -> torch.Tensor:
        """``phi(x)``: B, N, d -> B, N, m."""
        half_norm = x.square().sum(dim=-1, keepdim=True) / 2  # B, N, 1
        projected = x @ self.random_features.to(x.dtype).t()  # B, N, m
        return torch.exp(projected - half_norm) / math.sqrt(self.num_features)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(x).split(self.out_dim, dim=-1)  # three of B, N, out_dim
        dtype = torch.promote_types(x.dtype, torch.float32)
        device = "cpu" if x.device.type == "meta" else x.device.type  # meta (shape-only runs) has no autocast
        with torch.autocast(device, enabled=False):
            k, q, v = k.to(dtype), q.to(dtype), v.to(dtype)
            kp, qp = self.kernel_features(k), self.kernel_features(q)  # B, N, m
            normaliser = qp @ kp.sum(dim=1).unsqueeze(-1)  # B, N, m @ B, m, 1 -> B, N, 1
            context = kp.transpose(1, 2) @ v  # B, m, N @ B, N, out_dim -> B, m, out_dim
            y = (qp @ context) / (normaliser + self.epsilon)  # B, N, out_dim
        return v + self.drop(self.proj(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def extra_repr(self) -> str:
        return f"random_features={self.num_features}"


class TokenAttention(nn.Module):
    """Single-head attention from ``dim``-wide tokens to ``out_dim``-wide ones, skip connection from the values."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.scale = dim**-0.5  # official: head_dim of the *input* width (see the module docstring)
        self.qkv = nn.Linear(dim, 3 * out_dim, bias=False)
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).split(self.out_dim, dim=-1)  # three of B, N, out_dim
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # B, N, out_dim
        return v + self.proj(y)


class TokenTransformer(nn.Module):
    """Re-structurization with a single-head transformer layer (Sec. 3.1, Eq. 1): T2T-ViT_t variants."""

    def __init__(self, dim: int, out_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class T2TModule(nn.Module):
    """The Tokens-to-Token module (Sec. 3.1, Fig. 4): soft split, two re-structurizations, final projection.

    ``224 x 224`` images become ``56 x 56`` (1/4), ``28 x 28`` (1/8) and finally ``14 x 14`` (1/16) token grids.
    """

    def __init__(self, config: T2TViTConfig) -> None:
        super().__init__()
        if not (len(config.kernel_sizes) == len(config.strides) == len(config.paddings) == 3):
            raise ValueError(f"the T2T module has three soft splits; got {config}")
        splits = list(zip(config.kernel_sizes, config.strides, config.paddings, strict=True))
        self.soft_split0, self.soft_split1, self.soft_split2 = (SoftSplit(*s) for s in splits)
        c, k = config.token_dim, config.kernel_sizes
        widths = (config.in_chans * k[0] ** 2, c * k[1] ** 2)
        if config.tokens_type == "performer":
            self.attention1: nn.Module = TokenPerformer(
                widths[0], c, config.kernel_ratio, config.t2t_mlp_ratio, config.t2t_dropout
            )
            self.attention2: nn.Module = TokenPerformer(
                widths[1], c, config.kernel_ratio, config.t2t_mlp_ratio, config.t2t_dropout
            )
        elif config.tokens_type == "transformer":
            self.attention1 = TokenTransformer(widths[0], c, config.t2t_mlp_ratio)
            self.attention2 = TokenTransformer(widths[1], c, config.t2t_mlp_ratio)
        else:
            raise ValueError(f"tokens_type must be 'performer' or 'transformer', got {config.tokens_type!r}")
        self.project = nn.Linear(c * k[2] ** 2, config.embed_dim)

    def grids(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """Token grids after each soft split for an ``H x W`` image."""
        grids = []
        for split in (self.soft_split0, self.soft_split1, self.soft_split2):
            size = split.output_size(size)
            grids.append(size)
        return grids

    def restructure(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Soft split ``step`` (0 or 1) and its re-structurization: ``B, C, H, W -> B, C', H', W'``."""
        split, layer = (self.soft_split0, self.attention1) if step == 0 else (self.soft_split1, self.attention2)
        height, width = split.output_size((x.shape[-2], x.shape[-1]))
        x = layer(split(x))  # B, N, C'
        return x.transpose(1, 2).reshape(x.shape[0], -1, height, width)  # B, N, C' -> B, C', H', W'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images to the final tokens ``B, N, C`` of the 1/16 grid."""
        return self.project(self.soft_split2(self.restructure(self.restructure(x, 0), 1)))


class Attention(nn.Module):
    """Multi-head self-attention of the backbone."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, qk_scale: float | None, drop: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = qk_scale if qk_scale is not None else (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        # B, N, 3C -> 3, B, heads, N, C / heads
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # B, heads, N, C / heads
        x = x.transpose(1, 2).reshape(B, N, C)  # B, heads, N, C / heads -> B, N, C
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block of the deep-narrow backbone (Sec. 3.2, Eq. 6)."""

    def __init__(self, config: T2TViTConfig, drop_path: float) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, config.num_heads, config.qkv_bias, config.qk_scale, config.drop_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), config.drop_rate, config.drop_rate)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)

    def extra_repr(self) -> str:
        return f"drop_path={self.drop_path}"
