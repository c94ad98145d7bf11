"""Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet.

Yuan, Chen, Wang, Yu, Shi, Jiang, Tay, Feng, Yan. ICCV 2021. arXiv:2101.11986.
Official code: https://github.com/yitu-opensource/T2T-ViT (``models/t2t_vit.py``, ``models/token_performer.py``,
``models/token_transformer.py``, ``models/transformer_block.py``).

Differences from the official code:
- the attention scale of the backbone is ``head_dim ** -0.5`` (``qk_scale=None``), as the official evaluation builds
  the model (``main.py`` calls the factories with ``pretrained=False`` and loads the checkpoint afterwards). The
  official factories, when called with ``pretrained=True``, silently set ``qk_scale = embed_dim ** -0.5`` (``512 **
  -0.5`` for T2T-ViT-14-wide), a different network; ``qk_scale`` in the config reproduces that if ever wanted;
- the token transformer of the T2T module keeps the official scale ``dim ** -0.5`` where ``dim`` is the width of
  its *input* (147 and 576), not of its 64-wide queries: that is what the released checkpoints were trained with;
- the performer's random feature matrix ``w`` is called ``random_features`` and its MLP ``mlp.fc1``/``mlp.fc2``
  (official ``mlp.0``/``mlp.2``); :mod:`litevit.models.t2t_vit_convert` renames the keys. Like the official
  ``w`` it is a frozen parameter (``requires_grad=False``) that is saved in and loaded from checkpoints, never redrawn;
- the token grids are tracked as ``(H, W)`` instead of ``sqrt(N)``, so non-square ``img_size`` works; the sinusoid
  table is, as in the official code, indexed by the flattened token position (class token first);
- the performer's kernel features are computed in at least float32 with autocast disabled (the official code casts
  to float32 for the same reason), and keep float64 when the model is float64.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence

import torch
from torch import nn

from ..layers import adapt_input_conv, check_images, checkpointed, resample_table, set_img_size, square_side, to_2tuple
from ..registry import DataConfig, Paper, register
from . import t2t_vit_convert
from .features import take_indices, to_format
from .t2t_vit_blocks import Block, T2TModule, T2TViTConfig, sinusoid_table


class T2TViT(nn.Module):
    """T2T-ViT: the T2T module to a 1/16 token grid, a class token and a fixed sinusoid table, a deep-narrow ViT."""

    family = "t2t_vit"
    converter = t2t_vit_convert  # reads the official and timm checkpoint layouts

    head_prefixes = ("head.",)

    def __init__(self, config: T2TViTConfig) -> None:
        super().__init__()
        self.config = config
        self.img_size = to_2tuple(config.img_size)
        if min(self.img_size) < 16:
            raise ValueError(f"img_size must be at least 16, got {config.img_size}")
        self.tokens_to_token = T2TModule(config)
        self.grids = self.tokens_to_token.grids(self.img_size)
        self.grid = self.grids[-1]
        num_patches = self.grid[0] * self.grid[1]
        dim = config.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # fixed, frozen, and part of the official checkpoints (which a resolution change interpolates)
        self.pos_embed = nn.Parameter(sinusoid_table(num_patches + 1, dim), requires_grad=False)
        self.pos_drop = nn.Dropout(config.drop_rate)
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]  # linear from 0
        self.blocks = nn.Sequential(*(Block(config, rate) for rate in rates))
        self.norm = nn.LayerNorm(dim)
        reductions = list(itertools.accumulate(config.strides, operator.mul))
        widths = (config.token_dim, config.token_dim, dim)
        modules = ("tokens_to_token.attention1", "tokens_to_token.attention2", "blocks")
        self.feature_info = [
            dict(num_chs=c, reduction=r, module=m) for c, r, m in zip(widths, reductions, modules, strict=True)
        ]
        self.num_features = dim
        self.head: nn.Module
        self.reset_classifier(config.num_classes)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: no classifier, features out)."""
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def get_classifier(self) -> nn.Module:
        return self.head

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every backbone block while training: recomputed during backward."""
        if self.blocks is not None:
            self.blocks = checkpointed(self.blocks, enable)
        self.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        """timm's parameter groups (its ViT's, layer-wise lr decay): class token, position table and T2T module as
        the stem, then each block, the final norm with the last block."""
        return dict(
            stem=r"^cls_token|^pos_embed|^tokens_to_token", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]
        )

    @torch.no_grad()
    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Rebuild in place for another input size, as loading these weights at ``img_size`` would: the grid part of
        the position table is resampled bicubically, the class-token row kept."""
        size = to_2tuple(img_size)
        if min(size) < 16:
            raise ValueError(f"img_size must be at least 16, got {img_size}")
        grids = self.tokens_to_token.grids(size)
        if self.pos_embed is not None and grids[-1] != self.grid:
            table = self.pos_embed
            grid = table[0, 1:].t().reshape(-1, *self.grid)  # N, C -> C, H, W
            resized = resample_table(grid, grids[-1]).flatten(1).t()  # C, H', W' -> N', C
            self.pos_embed = nn.Parameter(torch.cat((table[:, :1], resized[None]), dim=1), requires_grad=False)
        self.img_size, self.grids, self.grid = size, grids, grids[-1]
        set_img_size(self, img_size)

    def adapt_input_channels(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's RGB first T2T layer adapted to ``in_chans``.

        That layer reads unfolded ``k x k`` patches, channel-major (``C * k * k`` values), through a LayerNorm and a
        linear map: the linear weight of each channel's block follows timm's ``adapt_input_conv`` rule (sum over RGB,
        or repeat and scale by 3 / N); the LayerNorm's per-value scale and shift are averaged over RGB (one channel)
        or repeated (N channels), there being nothing to sum.
        """
        in_chans, patch = self.config.in_chans, self.config.kernel_sizes[0] ** 2
        prefix = "tokens_to_token.attention1."
        linear = prefix + ("kqv.weight" if self.config.tokens_type == "performer" else "attn.qkv.weight")
        weight = state.get(linear)
        if weight is None or weight.ndim != 2 or weight.shape[1] != 3 * patch or in_chans == 3:
            return state
        state = dict(state)
        state[linear] = adapt_input_conv(weight.view(weight.shape[0], 3, patch), in_chans).flatten(1)
        for key in (prefix + "norm1.weight", prefix + "norm1.bias"):
            if key in state and state[key].numel() == 3 * patch:
                affine = state[key].view(3, patch)
                repeated = affine.repeat(math.ceil(in_chans / 3), 1)[:in_chans]
                state[key] = (affine.mean(0, keepdim=True) if in_chans == 1 else repeated).flatten()
        return state

    def _check_input(self, x: torch.Tensor) -> None:
        name = getattr(self, "variant_name", "T2T-ViT")
        check_images(x, self.config.in_chans, name)
        if min(x.shape[-2:]) < 16 or self.tokens_to_token.grids((x.shape[-2], x.shape[-1]))[-1] != self.grid:
            height, width = self.img_size
            raise ValueError(
                f"{name} was built for {height}x{width} inputs (a {self.grid[0]}x{self.grid[1]} token grid); got "
                f"{x.shape[-2]}x{x.shape[-1]}. Build it with img_size=({x.shape[-2]}, {x.shape[-1]}) to run at "
                f"that size."
            )

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # B, 1, C
        return self.pos_drop(torch.cat((cls, tokens), dim=1) + self.pos_embed)  # B, 1 + N, C

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Maps ``B, C_i, H_i, W_i`` at the three feature points, with timm's semantics.

        The points are the two re-structurized maps of the T2T module (1/4 and 1/8, ``token_dim`` wide: shallow,
        two layers deep) and the backbone's tokens on the 1/16 grid without the class token (``embed_dim`` wide),
        layer-normed when ``norm``. T2T-ViT is single-scale: only the last point is deep (see
        :class:`.features.SimpleFeaturePyramid` for a pyramid built from it). ``indices``: points to return
        (None: all, int n: the last n, or a list). ``stop_early``: stop after the last point returned. Returns
        ``(final, maps)``, ``final`` being ``forward_features``' normed tokens ``B, 1 + N, C`` when the backbone ran,
        else the last map computed; or ``maps`` only when ``intermediates_only``. A pruned model
        (:meth:`prune_intermediate_layers`) stops after the last point it keeps.
        """
        t2t = self.tokens_to_token
        kept = 3 if self.blocks is not None else 2 if t2t.attention2 is not None else 1
        take, last = take_indices(len(self.feature_info), indices, kept=kept)
        end = last if stop_early else kept - 1  # the last point to compute
        self._check_input(x)
        features = []
        for step in range(2):
            x = t2t.restructure(x, step)
            if step in take:
                features.append(to_format(x, output_fmt))
            if step == end:
                return features if intermediates_only else (x, features)
        tokens = self.blocks(self._embed(t2t.project(t2t.soft_split2(x))))
        normed = self.norm(tokens)
        if 2 in take:
            grid = (normed if norm else tokens)[:, 1:]  # drop the class token: B, N, C
            height, width = self.grid
            features.append(to_format(grid.transpose(1, 2).reshape(x.shape[0], -1, height, width), output_fmt))
        return features if intermediates_only else (normed, features)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] | None = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Remove what computing the feature points in ``indices`` does not need (timm's API); returns those points,
        counted from 0.

        Up to point 1 (1/8) the backbone goes (projection, class token, position table, blocks, norm: set to
        ``None``), up to point 0 (1/4) the second re-structurization too. ``prune_norm`` replaces the final norm with
        an identity (keep it when the 1/16 map is taken with ``norm=True``); ``prune_head`` removes the classifier.
        """
        t2t = self.tokens_to_token
        kept = 3 if self.blocks is not None else 2 if t2t.attention2 is not None else 1
        take, last = take_indices(len(self.feature_info), indices, kept=kept)
        if last < 2:
            t2t.project = None
            self.cls_token = None
            self.pos_embed = None
            self.blocks = None
            self.norm = None
        elif prune_norm:
            self.norm = nn.Identity()
        if last < 1:
            t2t.attention2 = None
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens ``B, 1 + N, C``, class token first."""
        self._check_input(x)
        return self.norm(self.blocks(self._embed(self.tokens_to_token(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]  # B, 1 + N, C -> B, C: the class token
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def adapt_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fit a checkpoint's position table to this model's token grid.

        A checkpoint without ``pos_embed`` keeps the model's sinusoid table (it is fixed, not learned). One trained
        at another resolution has its grid part bicubically interpolated, as the official
        ``utils.resize_pos_embed`` does; the class-token row is kept.
        """
        state = dict(state)
        if self.pos_embed is None:  # pruned with the backbone (prune_intermediate_layers): no table to fit
            return state
        table = state.get("pos_embed")
        if table is None:
            state["pos_embed"] = self.pos_embed.detach().clone()
            return state
        own = self.pos_embed
        if table.shape == own.shape or table.ndim != 3 or table.shape[0] != 1 or table.shape[2] != own.shape[2]:
            return state
        side = square_side(table.shape[1] - 1, "pos_embed of the checkpoint (without its class token)")
        grid = table[0, 1:].t().reshape(-1, side, side)  # N, C -> C, side, side
        resized = resample_table(grid, self.grid).flatten(1).t()  # C, H, W -> N', C
        state["pos_embed"] = torch.cat((table[:, :1], resized[None]), dim=1)
        return state


def _t2t(embed_dim: int, depth: int, num_heads: int, mlp_ratio: float, tokens_type: str) -> T2TViTConfig:
    return T2TViTConfig(
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, tokens_type=tokens_type
    )


_PAPER = (
    "official README (yitu-opensource/T2T-ViT, 'T2T-ViT Models' tables: Top1 Acc, #params, MACs at 224); "
    "#params counts the frozen sinusoid table and random features"
)
_DATA = DataConfig(img_size=224, crop_pct=0.9, interpolation="bicubic")  # the official default_cfg, used by main.py

register(
    "t2t_vit_7",
    T2TViT,
    _t2t(256, 7, 4, 2.0, "performer"),
    Paper(4.3, 1100, 71.7, 224, _PAPER),
    _DATA,
    ("t2t_vit_7", "T2t_vit_7"),
)
register(
    "t2t_vit_10",
    T2TViT,
    _t2t(256, 10, 4, 2.0, "performer"),
    Paper(5.9, 1500, 75.2, 224, _PAPER),
    _DATA,
    ("t2t_vit_10", "T2t_vit_10"),
)
register(
    "t2t_vit_12",
    T2TViT,
    _t2t(256, 12, 4, 2.0, "performer"),
    Paper(6.9, 1800, 76.5, 224, _PAPER),
    _DATA,
    ("t2t_vit_12", "T2t_vit_12"),
)
register(
    "t2t_vit_14",
    T2TViT,
    _t2t(384, 14, 6, 3.0, "performer"),
    Paper(21.5, 4800, 81.5, 224, _PAPER),
    _DATA,
    ("t2t_vit_14", "T2t_vit_14"),
)
register(
    "t2t_vit_19",
    T2TViT,
    _t2t(448, 19, 7, 3.0, "performer"),
    Paper(39.2, 8500, 81.9, 224, _PAPER),
    _DATA,
    ("t2t_vit_19", "T2t_vit_19"),
)
register(
    "t2t_vit_24",
    T2TViT,
    _t2t(512, 24, 8, 3.0, "performer"),
    Paper(64.1, 13800, 82.3, 224, _PAPER),
    _DATA,
    ("t2t_vit_24", "T2t_vit_24"),
)
register(
    "t2t_vit_t_14",
    T2TViT,
    _t2t(384, 14, 6, 3.0, "transformer"),
    Paper(21.5, 6100, 81.7, 224, _PAPER),
    _DATA,
    ("t2t_vit_t_14", "T2t_vit_t_14"),
)
register(
    "t2t_vit_t_19",
    T2TViT,
    _t2t(448, 19, 7, 3.0, "transformer"),
    Paper(39.2, 9800, 82.4, 224, _PAPER),
    _DATA,
    ("t2t_vit_t_19", "T2t_vit_t_19"),
)
register(
    "t2t_vit_t_24",
    T2TViT,
    _t2t(512, 24, 8, 3.0, "transformer"),
    Paper(64.1, 15000, 82.6, 224, _PAPER),
    _DATA,
    ("t2t_vit_t_24", "T2t_vit_t_24"),
)
