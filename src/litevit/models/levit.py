"""LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference.

Graham, El-Nouby, Touvron, Stock, Joulin, Jégou, Douze. ICCV 2021. arXiv:2104.01136.
Official code: https://github.com/facebookresearch/LeViT (``levit.py``); timm port ``timm/models/levit.py``.

Differences from the official code:
- the shrinking attention between stages is the first block of the next stage (``stages[i].downsample``)
  rather than the last block of the previous one; the computation is identical;
- the attention-bias index table is rebuilt by the model and never read from checkpoints, and it covers
  non-square inputs (offset index ``|dy| * W + |dx|``, equal to the official enumeration when ``H == W``);
- the attention biases are gathered on every forward in the trainable model and precomputed only by
  ``litevit.fuse`` (which also folds the ``D ** -0.5`` scale into the query weights), so that no cached
  table can go stale after loading weights or moving the model.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..layers import (
    BNLinear,
    ConvBN,
    LinearBN,
    Residual,
    StagedBlocks,
    adapt_input_weights,
    check_images,
    halve,
    resample_table,
    set_img_size,
    square_side,
    to_2tuple,
)
from ..registry import DataConfig, Paper, register
from . import levit_convert
from .features import take_indices, to_format


@dataclass(frozen=True)
class LeViTConfig:
    dims: tuple[int, ...] = (128, 256, 384)  # C: embedding width of each stage
    key_dim: int = 16  # D: width of queries and keys per head
    num_heads: tuple[int, ...] = (4, 6, 8)  # N: heads of each stage
    depths: tuple[int, ...] = (2, 3, 4)  # X: attention + MLP pairs per stage
    attn_ratio: float = 2.0  # value width = attn_ratio * D inside stages
    mlp_ratio: float = 2.0  # MLP hidden width = mlp_ratio * C
    down_attn_ratio: float = 4.0  # value width of the shrinking attention (its heads are C / D)
    down_mlp_ratio: float = 2.0  # MLP after the shrinking attention
    distilled: bool = True  # add the DeiT distillation head
    drop_path: float = 0.0  # p: stochastic depth on every residual
    num_classes: int = 1000
    img_size: int | tuple[int, int] = 224
    in_chans: int = 3


class LeViTAttention(nn.Module):
    """Multi-head attention with a learned per-head bias over |dy|, |dx| offsets (Sec. 4.2, 4.3).

    With ``stride`` 2 it is the shrinking attention of Sec. 4.2: queries come from a subsampled grid,
    keys and values from the full one, and there is no residual around it.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        key_dim: int,
        num_heads: int,
        attn_ratio: float,
        resolution: tuple[int, int],
        stride: int = 1,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.scale = key_dim**-0.5
        self.stride = stride
        self.resolution = resolution
        self.out_resolution = (halve(resolution[0]), halve(resolution[1])) if stride == 2 else resolution
        if stride == 1:
            self.qkv = LinearBN(dim, num_heads * (2 * key_dim + self.val_dim))
        else:
            self.q = LinearBN(dim, num_heads * key_dim)
            self.kv = LinearBN(dim, num_heads * (key_dim + self.val_dim))
        self.act = nn.Hardswish()
        self.proj = LinearBN(num_heads * self.val_dim, out_dim, bn_weight_init=0.0 if stride == 1 else 1.0)
        height, width = resolution
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, height * width))
        self.register_buffer("attention_bias_idxs", self._bias_index(), persistent=False)
        self.register_buffer("fused_bias", None)

    def _bias_index(self) -> torch.Tensor:
        (height, width), (out_h, out_w), s = self.resolution, self.out_resolution, self.stride
        queries = itertools.product(range(out_h), range(out_w))
        keys = list(itertools.product(range(height), range(width)))
        idx = [abs(qy * s - ky) * width + abs(qx * s - kx) for qy, qx in queries for ky, kx in keys]
        return torch.tensor(idx, dtype=torch.long).view(out_h * out_w, height * width)

    def attention_bias(self) -> torch.Tensor:
        """Per-head bias of shape ``(heads, N_queries, N_keys)``."""
        if self.fused_bias is not None:
            return self.fused_bias
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        kd, vd, heads = self.key_dim, self.val_dim, self.num_heads
        if self.stride == 1:
            # B, N, heads * (2 kd + vd) -> three of B, heads, N, d
            q, k, v = self.qkv(x).view(B, N, heads, -1).split([kd, kd, vd], dim=3)
            q = q.transpose(1, 2)
        else:
            k, v = self.kv(x).view(B, N, heads, -1).split([kd, vd], dim=3)
            height, width = self.resolution
            # B, N, C -> B, H, W, C -> every stride-th row and column -> B, N', C
            sub = x.view(B, height, width, -1)[:, :: self.stride, :: self.stride].reshape(B, -1, x.shape[-1])
            q = self.q(sub).view(B, -1, heads, kd).transpose(1, 2)  # B, heads, N', kd
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # B, heads, N, d
        attn = q @ k.transpose(-2, -1)  # B, heads, N', N
        if self.fused_bias is None:
            attn = attn * self.scale + self.attention_bias()
        else:
            attn += self.fused_bias  # fused: the scale lives in the query weights; in place saves a pass
        x = attn.softmax(dim=-1) @ v  # B, heads, N', vd
        x = x.transpose(1, 2).reshape(B, -1, heads * vd)  # B, N', heads * vd
        return self.proj(self.act(x))

    @torch.no_grad()
    def fuse(self) -> LeViTAttention:
        """Fold BatchNorms, gather the bias table once and fold the query scale into the query weights."""
        fused = copy.deepcopy(self)
        if self.fused_bias is not None:
            return fused  # already fused
        for name in ("qkv", "q", "kv", "proj"):
            layer = getattr(fused, name, None)
            if isinstance(layer, LinearBN):
                setattr(fused, name, layer.fuse())
        q_layer = fused.qkv if self.stride == 1 else fused.q
        per_head = q_layer.out_features // self.num_heads
        # rows of head h: [h * per_head, h * per_head + kd) are its query weights
        rows = q_layer.weight.view(self.num_heads, per_head, -1)
        rows[:, : self.key_dim] *= self.scale
        q_layer.bias.view(self.num_heads, per_head)[:, : self.key_dim] *= self.scale
        fused.scale = 1.0
        fused.fused_bias = self.attention_bias().detach().clone()
        del fused.attention_biases
        return fused

    @torch.no_grad()
    def set_resolution(self, resolution: tuple[int, int]) -> None:
        """Rebuild for another input grid: the bias table resampled bicubically over offsets, the index rebuilt."""
        if self.fused_bias is not None:
            raise ValueError("a fused attention holds its bias for one resolution; set the input size before fusing")
        if tuple(resolution) == tuple(self.resolution):
            return
        table = self.attention_biases.view(self.num_heads, *self.resolution)  # heads, |dy|, |dx|
        resampled = resample_table(table, resolution).reshape(self.num_heads, -1)
        self.resolution = tuple(resolution)
        self.out_resolution = (halve(resolution[0]), halve(resolution[1])) if self.stride == 2 else self.resolution
        self.attention_biases = nn.Parameter(resampled, requires_grad=self.attention_biases.requires_grad)
        self.attention_bias_idxs = self._bias_index().to(resampled.device)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, key_dim={self.key_dim}, stride={self.stride}, resolution={self.resolution}"


class LeViTMlp(nn.Sequential):
    """Linear+BN, Hardswish, Linear+BN: the MLP with expansion 2 that follows every attention (Sec. 4.2)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = LinearBN(dim, hidden)
        self.act = nn.Hardswish()
        self.fc2 = LinearBN(hidden, dim, bn_weight_init=0.0)


class LeViTBlock(nn.Sequential):
    """Residual attention followed by a residual MLP."""

    def __init__(self, dim: int, config: LeViTConfig, num_heads: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.attn = Residual(
            LeViTAttention(dim, dim, config.key_dim, num_heads, config.attn_ratio, resolution), config.drop_path
        )
        self.mlp = Residual(LeViTMlp(dim, int(dim * config.mlp_ratio)), config.drop_path)


class LeViTDownsample(nn.Sequential):
    """Shrinking attention (stride 2, heads C / D, no residual) followed by a residual MLP (Sec. 4.2)."""

    def __init__(self, in_dim: int, out_dim: int, config: LeViTConfig, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.attn = LeViTAttention(
            in_dim, out_dim, config.key_dim, in_dim // config.key_dim, config.down_attn_ratio, resolution, stride=2
        )
        self.mlp = Residual(LeViTMlp(out_dim, int(out_dim * config.down_mlp_ratio)), config.drop_path)


class LeViTStage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[nn.Module], resolution: tuple[int, int]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.resolution = resolution  # token grid of this stage's output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class LeViT(StagedBlocks, nn.Module):
    """LeViT: conv stem to 1/16, three attention stages on a 14 -> 7 -> 4 grid, average pool, BN+Linear heads."""

    family = "levit"
    converter = levit_convert  # reads the official and timm checkpoint layouts

    head_prefixes = ("head.", "head_dist.")

    def __init__(self, config: LeViTConfig) -> None:
        super().__init__()
        self.config = config
        dims = config.dims
        if not (len(dims) == len(config.depths) == len(config.num_heads)):
            raise ValueError(f"dims, depths and num_heads must have equal lengths, got {config}")
        c = dims[0]
        self.stem = nn.Sequential(  # Sec. 4.2: four 3x3 stride-2 convolutions, 3 -> C/8 -> C/4 -> C/2 -> C
            ConvBN(config.in_chans, c // 8, 3, 2, 1),
            nn.Hardswish(),
            ConvBN(c // 8, c // 4, 3, 2, 1),
            nn.Hardswish(),
            ConvBN(c // 4, c // 2, 3, 2, 1),
            nn.Hardswish(),
            ConvBN(c // 2, c, 3, 2, 1),
        )
        self.img_size = to_2tuple(config.img_size)
        resolution = tuple(halve(halve(halve(halve(n)))) for n in self.img_size)
        self.stem_resolution = resolution
        stages = []
        for i, (dim, depth, heads) in enumerate(zip(dims, config.depths, config.num_heads, strict=True)):
            downsample: nn.Module = nn.Identity()
            if i > 0:
                downsample = LeViTDownsample(dims[i - 1], dim, config, resolution)
                resolution = downsample.attn.out_resolution
            blocks = [LeViTBlock(dim, config, heads, resolution) for _ in range(depth)]
            stages.append(LeViTStage(downsample, blocks, resolution))
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=dim, reduction=16 * 2**i, module=f"stages.{i}") for i, dim in enumerate(dims)]
        self.num_features = dims[-1]
        # training mode returns (class, distillation) logits only when switched on (timm's set_distilled_training)
        self.distilled_training = False
        self.head: nn.Module
        self.head_dist: nn.Module | None
        self.reset_classifier(config.num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier(s) with fresh ones for ``num_classes`` (0: no classifier, features out)."""
        dim = self.num_features
        self.head = BNLinear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = None
        if self.config.distilled:
            self.head_dist = BNLinear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module | tuple[nn.Module, nn.Module]:
        """The classifier; ``(head, head_dist)`` for a distilled LeViT, as timm's ``LevitDistilled``."""
        return self.head if self.head_dist is None else (self.head, self.head_dist)

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Rebuild in place for another input size, as loading these weights at ``img_size`` would: every
        attention-bias table is resampled (bicubic over offsets) to its new token grid."""
        if any(isinstance(m, LeViTAttention) and m.fused_bias is not None for m in self.modules()):
            raise ValueError("a fused LeViT holds its biases for one resolution; set the input size before fusing")
        self.img_size = to_2tuple(img_size)
        resolution = tuple(halve(halve(halve(halve(n)))) for n in self.img_size)
        self.stem_resolution = resolution
        for i, stage in enumerate(self.stages):
            if i > 0:
                stage.downsample.attn.set_resolution(resolution)
                resolution = stage.downsample.attn.out_resolution
            for block in stage.blocks:
                block.attn.m.set_resolution(resolution)
            stage.resolution = resolution
        set_img_size(self, img_size)

    def adapt_input_channels(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's RGB stem convolution adapted to ``in_chans`` (timm's ``adapt_input_conv`` rule)."""
        return adapt_input_weights(state, ("stem.0.conv.weight",), self.config.in_chans)

    def set_distilled_training(self, enable: bool = True) -> None:
        """Training mode returns ``(class, distillation)`` logits for a distillation loss when on; one tensor (the
        mean of both heads, as in eval) when off, so that a plain ``cross_entropy(model(x), y)`` loop works."""
        self.distilled_training = enable

    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if "attention_biases" in name}

    def _check_input(self, x: torch.Tensor) -> None:
        name = getattr(self, "variant_name", "LeViT")
        check_images(x, self.config.in_chans, name)
        grid = tuple(halve(halve(halve(halve(n)))) for n in x.shape[-2:])
        if grid != self.stem_resolution:
            (gh, gw), (h, w) = self.stem_resolution, self.img_size
            raise ValueError(
                f"{name} was built for {h}x{w} inputs (it accepts heights {16 * gh - 15}..{16 * gh} and widths "
                f"{16 * gw - 15}..{16 * gw}); got {x.shape[-2]}x{x.shape[-1]}. "
                f"Build it with img_size=({x.shape[-2]}, {x.shape[-1]}) to run at that size."
            )

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Checked images through the conv stem to stage-1 tokens."""
        self._check_input(x)
        # B, C, H, W -> B, N, C; contiguous so that every linear of stage 1 runs as one addmm
        return self.stem(x).flatten(2).transpose(1, 2).contiguous()

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs as maps ``B, C_i, H_i, W_i`` (1/16, 1/32, 1/64), with timm's semantics.

        ``indices``: stages to return (None: all, int n: the last n, or a list). ``stop_early``: run no stage past
        the last one returned. Returns ``(final, maps)``, ``final`` being the last tokens computed ``B, N, C`` (what
        ``forward_head`` takes after the full network), or ``maps`` only when ``intermediates_only``. LeViT has no
        final norm: ``norm`` changes nothing.
        """
        take, last = take_indices(len(self.feature_info), indices, kept=len(self.stages))
        stages = self.stages[: last + 1] if stop_early else self.stages
        x = self._tokens(x)
        features = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                height, width = stage.resolution
                grid = x.transpose(1, 2).reshape(x.shape[0], -1, height, width)  # B, N, C -> B, C, H, W
                features.append(to_format(grid, output_fmt))
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
        """Tokens of the last stage, ``B, N, C``."""
        return self.stages(self._tokens(x))

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = x.mean(1)  # B, N, C -> B, C
        if pre_logits:
            return x
        if self.head_dist is None:
            return self.head(x)
        logits, logits_dist = self.head(x), self.head_dist(x)
        if self.training and self.distilled_training:
            return logits, logits_dist
        return (logits + logits_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Class logits (the mean of both heads when distilled); ``(class, distillation)`` logits in training mode
        after :meth:`set_distilled_training`."""
        return self.forward_head(self.forward_features(x))

    def adapt_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Resample attention-bias tables of a checkpoint trained at another resolution (bicubic over offsets)."""
        state = dict(state)
        for name, module in self.named_modules():
            key = f"{name}.attention_biases"
            if not isinstance(module, LeViTAttention) or key not in state:
                continue
            table = state[key]
            height, width = module.resolution
            if table.ndim != 2 or table.shape[0] != module.num_heads or table.shape[1] == height * width:
                continue
            side = square_side(table.shape[1], key)
            grid = table.view(module.num_heads, side, side)  # heads, |dy|, |dx|
            state[key] = resample_table(grid, (height, width)).reshape(module.num_heads, height * width)
        return state


def _levit(
    dims: tuple[int, ...], key_dim: int, heads: tuple[int, ...], depths: tuple[int, ...], drop: float
) -> LeViTConfig:
    return LeViTConfig(dims=dims, key_dim=key_dim, num_heads=heads, depths=depths, drop_path=drop)


_PAPER = "LeViT paper, Table 3 (top-1 with distillation, 1000 epochs); params and FLOPs (= MACs) as published"
_DATA = DataConfig(img_size=224, crop_pct=0.875, interpolation="bicubic")  # DeiT evaluation transform

register(
    "levit_128s",
    LeViT,
    _levit((128, 256, 384), 16, (4, 6, 8), (2, 3, 4), 0.0),
    Paper(7.8, 305, 76.6, 224, _PAPER),
    _DATA,
    ("LeViT_128S", "levit_128s", "levit_conv_128s"),
)
register(
    "levit_128",
    LeViT,
    _levit((128, 256, 384), 16, (4, 8, 12), (4, 4, 4), 0.0),
    Paper(9.2, 406, 78.6, 224, _PAPER),
    _DATA,
    ("LeViT_128", "levit_128", "levit_conv_128"),
)
register(
    "levit_192",
    LeViT,
    _levit((192, 288, 384), 32, (3, 5, 6), (4, 4, 4), 0.0),
    Paper(11.0, 658, 80.0, 224, _PAPER),
    _DATA,
    ("LeViT_192", "levit_192", "levit_conv_192"),
)
register(
    "levit_256",
    LeViT,
    _levit((256, 384, 512), 32, (4, 6, 8), (4, 4, 4), 0.0),
    Paper(18.9, 1120, 81.6, 224, _PAPER),
    _DATA,
    ("LeViT_256", "levit_256", "levit_conv_256"),
)
register(
    "levit_384",
    LeViT,
    _levit((384, 512, 768), 32, (6, 9, 12), (4, 4, 4), 0.1),
    Paper(39.1, 2353, 82.6, 224, _PAPER),
    _DATA,
    ("LeViT_384", "levit_384", "levit_conv_384"),
)
