"""Layers shared by every family: the Conv-BN family, a residual with drop path, helpers.

Every layer that can be simplified for inference has ``fuse() -> nn.Module`` returning an
equivalent plain module; :func:`litevit.fuse` walks a model and calls them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


def to_2tuple(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``(H, W)`` from an int (square) or a pair."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def halve(n: int) -> int:
    """Output length of a stride-2 step with kernel 3 and padding 1 (or of ``[::2]`` slicing)."""
    return (n - 1) // 2 + 1


def check_images(x: torch.Tensor, in_chans: int, name: str) -> None:
    """A clear error unless ``x`` is a ``B, in_chans, H, W`` image batch."""
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"{name} expects images of shape (B, {in_chans}, H, W); got {tuple(x.shape)}")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``value`` to a multiple of ``divisor`` without going below ``round_limit`` of it (MobileNetV2 rule)."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def _bn_scale_shift(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (scale, shift) such that ``bn(x) == x * scale + shift`` in eval mode."""
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError(f"cannot fold {bn}: it tracks no running statistics")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _batchnorm_init(bn: nn.Module, weight_init: float) -> None:
    nn.init.constant_(bn.weight, weight_init)
    nn.init.zeros_(bn.bias)


class ConvBN(nn.Module):
    """Conv2d without bias followed by BatchNorm2d; ``fuse()`` folds the BN into the conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        _batchnorm_init(self.bn, bn_weight_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        scale, shift = _bn_scale_shift(self.bn)
        conv = self.conv
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=True,
            padding_mode=conv.padding_mode,
        ).to(conv.weight)
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(shift)
        return fused


class LinearBN(nn.Module):
    """Linear without bias followed by BatchNorm1d over all tokens (inputs ``B, N, C`` or ``B, C``)."""

    def __init__(self, in_features: int, out_features: int, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)
        _batchnorm_init(self.bn, bn_weight_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        # B, N, C -> B*N, C: BatchNorm1d normalises each channel over batch and tokens alike
        return self.bn(x.flatten(0, -2)).reshape_as(x)

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        scale, shift = _bn_scale_shift(self.bn)
        fused = nn.Linear(self.linear.in_features, self.linear.out_features, bias=True).to(self.linear.weight)
        fused.weight.copy_(self.linear.weight * scale[:, None])
        fused.bias.copy_(shift)
        return fused


class BNLinear(nn.Module):
    """BatchNorm1d followed by Linear: the classifier head of LeViT and EfficientViT."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, std: float = 0.02) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        nn.init.trunc_normal_(self.linear.weight, std=std)
        if bias:
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(x))

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        # linear(x * s + t) = (W * s) x + (W t + b)
        scale, shift = _bn_scale_shift(self.bn)
        w = self.linear.weight
        fused = nn.Linear(w.shape[1], w.shape[0], bias=True).to(w)
        fused.weight.copy_(w * scale[None, :])
        bias = w @ shift
        if self.linear.bias is not None:
            bias = bias + self.linear.bias
        fused.bias.copy_(bias)
        return fused


class SplitLayer(nn.Module):
    """A convolution or linear layer whose outputs are cut into groups, as one layer per group: the fused form of
    ``layer(x).split(sizes, dim)`` (dim 1 for a convolution, -1 for a linear layer). An exported graph then holds no
    split node (OpenVINO runs a channel split as a reference-kernel copy, a large share of the batch-1 time of the
    small attention models), and each group is a layer output of its own, which OpenVINO's attention fusion takes as
    an input."""

    def __init__(self, parts: list[nn.Conv2d] | list[nn.Linear]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    @classmethod
    @torch.no_grad()
    def from_layer(cls, layer: nn.Conv2d | nn.Linear, sizes: list[int]) -> SplitLayer:
        """``layer``'s outputs cut into consecutive groups of ``sizes`` (their sum must be all of them)."""
        outputs = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        if sum(sizes) != outputs or getattr(layer, "groups", 1) != 1:
            raise ValueError(f"cannot split the {outputs} outputs of {layer} into groups of {sizes}")
        parts, start = [], 0
        for size in sizes:
            part = copy.deepcopy(layer)
            part.weight = nn.Parameter(layer.weight[start : start + size].clone())
            if layer.bias is not None:
                part.bias = nn.Parameter(layer.bias[start : start + size].clone())
            if isinstance(part, nn.Conv2d):
                part.out_channels = size
            else:
                part.out_features = size
            parts.append(part)
            start += size
        return cls(parts)

    from_conv = from_layer  # SplitConv's name for it (see the deprecated alias below)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(part(x) for part in self.parts)


@torch.no_grad()
def split_scaled_qkv(qkv: nn.Linear, scale: float) -> SplitLayer:
    """The fused form of a joint query-key-value projection (``qkv(x)`` cut into q, k, v on the last dim): three
    linear layers, the attention ``scale`` folded into the query's rows (the attention then runs with scale 1)."""
    split = SplitLayer.from_layer(qkv, [qkv.out_features // 3] * 3)
    query = split.parts[0]
    query.weight.mul_(scale)
    if query.bias is not None:
        query.bias.mul_(scale)
    return split


def qkv_heads(qkv: torch.Tensor | tuple[torch.Tensor, ...], num_heads: int) -> tuple[torch.Tensor, ...]:
    """Query, key and value from a joint projection's output ``B, N, 3C`` (or the three ``B, N, C`` outputs of its
    fused :class:`SplitLayer`), each as ``B, heads, N, C / heads``."""
    parts = qkv if isinstance(qkv, tuple) else qkv.chunk(3, dim=-1)
    return tuple(t.reshape(t.shape[0], t.shape[1], num_heads, -1).transpose(1, 2) for t in parts)


def channel_groups(x: torch.Tensor | tuple[torch.Tensor, ...], sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """``x.split(sizes, dim=1)``; the output of a :class:`SplitLayer` already is those groups and is passed on."""
    if isinstance(x, tuple):
        return x
    return x.split(sizes, dim=1)


def fold_norm_affine(
    norm: nn.LayerNorm | nn.GroupNorm, layer: nn.Linear | nn.Conv2d, channels: slice | None = None
) -> None:
    """``layer(norm(x))`` with the norm's per-channel affine folded into ``layer`` (in place; norm made plain).

    ``channels`` selects the input channels of ``layer`` that receive the normalised tensor (default: all).
    """
    weight, bias = norm.weight, norm.bias
    if weight is None:
        return
    channels = channels if channels is not None else slice(None)
    w = layer.weight  # out, in (, 1, 1)
    w2 = w.reshape(w.shape[0], w.shape[1], -1)
    shift = (w2[:, channels] * bias[None, :, None]).sum(dim=(1, 2))
    w2[:, channels] *= weight[None, :, None]
    if layer.bias is None:
        layer.bias = nn.Parameter(shift)
    else:
        layer.bias += shift
    if isinstance(norm, nn.LayerNorm):
        norm.weight, norm.bias, norm.elementwise_affine = None, None, False
    else:
        norm.weight, norm.bias, norm.affine = None, None, False


def drop_path(x: torch.Tensor, prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): zero whole samples with probability ``prob``, rescale the rest."""
    if prob == 0.0 or not training:
        return x
    keep = 1.0 - prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    def __init__(self, prob: float = 0.0) -> None:
        super().__init__()
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.prob, self.training)

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


class Residual(nn.Module):
    """``x + drop_path(m(x))``."""

    def __init__(self, m: nn.Module, drop_path: float = 0.0) -> None:
        super().__init__()
        self.m = m
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + drop_path(self.m(x), self.drop_path, self.training)

    def fuse(self) -> Residual:
        # drop path is the identity at inference; the walker then fuses ``m`` itself
        return Residual(self.m, 0.0)

    def extra_repr(self) -> str:
        return f"drop_path={self.drop_path}"


def resample_table(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubically resample a ``(C, H0, W0)`` grid of per-offset values to ``(C, H, W)``."""
    if tuple(table.shape[-2:]) == tuple(size):
        return table
    dtype = table.dtype
    out = F.interpolate(table[None].double(), size=size, mode="bicubic", align_corners=False)
    return out[0].to(dtype)


def square_side(n: int, what: str) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{what}: expected a square grid of {n} entries, cannot infer its side")
    return side


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first layer's RGB weights ``(O, 3, ...)`` for ``in_chans`` input channels, as timm's ``adapt_input_conv``.

    One channel: the sum over R, G and B (a grey image then gives what the RGB layer gives for the same grey image
    repeated three times). N channels: R, G, B repeated cyclically to N and scaled by 3 / N, so that the output keeps
    its magnitude when all channels carry similar values. Works for any trailing shape (kernel, or unfolded patch).
    """
    if weight.shape[1] == in_chans:
        return weight
    if weight.shape[1] != 3:
        raise ValueError(f"only RGB (3-channel) first-layer weights can be adapted, got {weight.shape[1]} channels")
    dtype = weight.dtype
    weight = weight.float()
    if in_chans == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        repeats = math.ceil(in_chans / 3)
        adapted = weight.repeat(1, repeats, *([1] * (weight.ndim - 2)))[:, :in_chans] * (3 / in_chans)
    return adapted.to(dtype)


def adapt_input_weights(
    state: dict[str, torch.Tensor], keys: tuple[str, ...], in_chans: int
) -> dict[str, torch.Tensor]:
    """``state`` with the RGB first-layer weights under ``keys`` adapted to ``in_chans`` (:func:`adapt_input_conv`)."""
    state = dict(state)
    for key in keys:
        weight = state.get(key)
        if weight is not None and weight.ndim >= 2 and weight.shape[1] != in_chans:
            state[key] = adapt_input_conv(weight, in_chans)
    return state


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorms that normalise with batch statistics but leave their running statistics as they are.

    Activation checkpointing runs a segment's forward a second time during backward; without this, every
    BatchNorm inside would update its running mean and variance twice per step.
    """
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def _checkpoint_contexts(module: nn.Module) -> tuple[contextlib.AbstractContextManager, ...]:
    """(first forward, recomputation) contexts for ``torch.utils.checkpoint``."""
    return contextlib.nullcontext(), _frozen_running_stats(module)


class CheckpointSequential(nn.Sequential):
    """``nn.Sequential`` whose children run under activation checkpointing while training with gradients.

    Each child's activations are dropped after its forward and recomputed during backward (non-reentrant
    ``torch.utils.checkpoint``, RNG state preserved so drop path draws the same masks), which trades one extra
    forward for the memory of the activations inside the children. The recomputation does not update BatchNorm
    running statistics a second time. In eval mode or without gradients it is a plain ``nn.Sequential``; the
    children keep their names, so the state dict is unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        for module in self:
            contexts = functools.partial(_checkpoint_contexts, module)
            x = checkpoint(module, x, use_reentrant=False, context_fn=contexts)
        return x


def checkpointed(seq: nn.Sequential, enable: bool) -> nn.Sequential:
    """The children of ``seq`` in a :class:`CheckpointSequential` (``enable``) or a plain ``nn.Sequential``."""
    kind = CheckpointSequential if enable else nn.Sequential
    if type(seq) is kind:
        return seq
    return kind(OrderedDict(seq.named_children())).train(seq.training)


class StagedBlocks:
    """``set_grad_checkpointing`` and ``group_matcher`` of a model whose ``stages`` each hold a ``downsample`` and
    ``blocks`` (LeViT, EfficientViT)."""

    stages: nn.ModuleList

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every block while training: activations are recomputed during backward."""
        for stage in self.stages:
            stage.blocks = checkpointed(stage.blocks, enable)
        self.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        """timm's parameter groups (layer-wise lr decay): the stem, then each block; a downsample joins block 0."""
        blocks = (
            r"^stages\.(\d+)"
            if coarse
            else [(r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)]
        )
        return dict(stem=r"^stem", blocks=blocks)


def set_img_size(model: nn.Module, img_size: int | tuple[int, int]) -> None:
    """Record a new input size in the model's frozen config and in ``model.model_info`` (if the loader set one)."""
    model.config = dataclasses.replace(model.config, img_size=img_size)
    info: Any = getattr(model, "model_info", None)
    if info is not None and dataclasses.is_dataclass(info):
        data = dataclasses.replace(info.data, img_size=img_size) if isinstance(img_size, int) else info.data
        model.model_info = dataclasses.replace(info, img_size=img_size, data=data)


def __getattr__(name: str) -> Any:
    if name == "SplitConv":  # renamed in 0.2: it splits linear layers too
        warnings.warn("litevit.layers.SplitConv is renamed SplitLayer", DeprecationWarning, stacklevel=2)
        return SplitLayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
