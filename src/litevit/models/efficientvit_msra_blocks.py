"""EfficientViT (MSRA)'s building blocks: the config, the sandwich block with cascaded group attention in local
windows, and the subsample block between stages. The network and its differences from the official code are in
:mod:`litevit.models.efficientvit_msra`.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvBN, Residual, make_divisible, resample_table


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
        self.tokens_first = False  # the fused form's order of attention (:meth:`_attend`)

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
        H, W = x.shape[-2:]
        kd = self.key_dim
        bias = self.attention_bias(H, W)
        splits = x.chunk(self.num_heads, dim=1)
        outputs = []
        feat = splits[0]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws, strict=True)):
            if i > 0:
                feat = feat + splits[i]  # the cascade: previous head's output refines this head's input
            q, k, v = qkv(feat).split([kd, kd, self.val_dim], dim=1)  # B, d, h, w each
            feat = self._attend(dw(q), k, v, bias[i])
            outputs.append(feat)
        return outputs

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """One head: ``softmax(q^T k * scale + bias)`` weighting ``v``; ``B, d, h, w`` in, ``B, val_dim, h, w`` out."""
        B, _, H, W = v.shape
        if self.tokens_first:
            # the fused form: tokens first, B, d, h, w -> B, h, w, d -> B, N, d, which is the memory order of
            # OpenVINO's channels-last convolutions, and one attention op, which OpenVINO runs as one node (no
            # MatMul and Softmax nodes, fewer layout reorders: benchmarks/speed/batch1_graph.md). The scale is in the
            # keys.
            q, k, v = (t.permute(0, 2, 3, 1).reshape(B, H * W, -1) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)  # B, N, d
            return out.view(B, H, W, self.val_dim).permute(0, 3, 1, 2)  # B, N, d -> B, h, w, d -> B, d, h, w
        q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)  # B, d, h, w -> B, d, N
        attn = (q.transpose(1, 2) @ k) * self.scale + bias  # B, N, N
        return (v @ attn.softmax(dim=-1).transpose(1, 2)).view(B, self.val_dim, H, W)  # B, d, N -> B, d, h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(torch.cat(self.heads(x), dim=1)))

    @torch.no_grad()
    def fuse(self) -> CascadedGroupAttention:
        """Fold BatchNorms, gather the bias table once, fold the query scale into the key projection and attend with
        tokens first (:meth:`_attend`)."""
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
        fused.tokens_first = True
        fused.fused_bias = self.attention_bias(*self.window).detach().clone()
        del fused.attention_biases
        return fused

    @torch.no_grad()
    def set_window(self, window: tuple[int, int]) -> None:
        """Rebuild for another window: the bias table resampled bicubically over offsets, the index rebuilt."""
        if self.fused_bias is not None:
            raise ValueError("a fused attention holds its bias for one window; set the input size before fusing")
        if tuple(window) == tuple(self.window):
            return
        resampled = resample_table(self.attention_biases, window)  # heads, |dy|, |dx|
        self.window = tuple(window)
        self.attention_biases = nn.Parameter(resampled, requires_grad=self.attention_biases.requires_grad)
        self.attention_bias_idxs = self._bias_index().to(resampled.device)

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

    def set_window(self, window: tuple[int, int]) -> None:
        self.window = tuple(window)
        self.attn.set_window(window)

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
