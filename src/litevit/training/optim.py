"""Optimisation pieces: warm-up + cosine schedule, EMA of the weights, AdamW parameter groups."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import torch
from torch import nn


class WarmupCosine:
    """Linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_epochs``, then cosine decay to ``min_lr``.

    Driven by fractional epochs (``epoch + step / steps_in_epoch``), so it is exact with variable-length epochs.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr: float,
        epochs: int,
        warmup_epochs: float = 0.0,
        min_lr: float = 0.0,
        warmup_lr: float = 0.0,
    ) -> None:
        if epochs <= 0:
            raise ValueError(f"epochs must be positive, got {epochs}")
        if not 0 <= warmup_epochs <= epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs}")
        self.optimizer = optimizer
        self.lr, self.epochs, self.warmup_epochs = lr, epochs, warmup_epochs
        self.min_lr, self.warmup_lr = min_lr, warmup_lr
        self.last_epoch = 0.0

    def lr_at(self, epoch: float) -> float:
        if epoch < self.warmup_epochs:
            return self.warmup_lr + (self.lr - self.warmup_lr) * epoch / self.warmup_epochs
        span = self.epochs - self.warmup_epochs
        progress = min(1.0, (epoch - self.warmup_epochs) / span) if span > 0 else 1.0
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def step_to(self, epoch: float) -> float:
        lr = self.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # layer-wise decay scales each group's rate
        self.last_epoch = epoch
        return lr

    def state_dict(self) -> dict[str, float]:
        return {"last_epoch": self.last_epoch, "lr": self.lr, "min_lr": self.min_lr, "warmup_lr": self.warmup_lr}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.last_epoch = float(state["last_epoch"])


class ModelEma:
    """An exponential moving average of a model's parameters and buffers: ``ema = decay * ema + (1 - decay) * w``.

    Integer buffers (BatchNorm's step counters) are copied. The copy is kept in eval mode and never trained.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = current[name].detach()
            if ema_value.is_floating_point():
                ema_value.lerp_(value.to(ema_value.dtype), 1.0 - self.decay)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


_JOIN_PREVIOUS = 99999.0  # timm's MATCH_PREV_GROUP: a matcher entry ending in it joins the group before it


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Each parameter's layer from ``model.group_matcher(coarse=False)``, as timm's ``group_parameters``.

    A name matched by entry ``e`` of the matcher (in order: stem, blocks) gets the ordinal ``(e, *numbers captured,
    *suffix)``; the distinct ordinals, sorted, are numbered from 0, an ordinal ending in 99999 taking the number of
    the one before it; unmatched names (the head) sort last.
    """
    compiled = []
    for index, spec in enumerate(model.group_matcher(coarse=False).values()):
        if spec is None:
            continue
        for pattern, suffix in spec if isinstance(spec, list | tuple) else [(spec, None)]:
            compiled.append((re.compile(pattern), float(index), tuple(map(float, suffix or ()))))

    def ordinal(name: str) -> tuple[float, ...]:
        for pattern, index, suffix in compiled:
            if m := pattern.match(name):
                return (index, *(float(g) for g in m.groups() if g is not None), *suffix)
        return (math.inf,)

    ordinals = {name: ordinal(name) for name, _ in model.named_parameters()}
    numbers: dict[tuple[float, ...], int] = {}
    layer = -1
    for key in sorted(set(ordinals.values())):
        if layer < 0 or key[-1] != _JOIN_PREVIOUS:
            layer += 1
        numbers[key] = layer
    return {name: numbers[key] for name, key in ordinals.items()}


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on 1-D parameters (biases, norms) and on ``model.no_weight_decay()``.

    With ``layer_decay`` (timm's layer-wise learning-rate decay, BEiT's recipe) the groups are split by
    :func:`layer_ids` and each carries ``lr_scale = layer_decay ** (num_layers - layer)``: the head (layer
    ``num_layers``) trains at the full rate, the stem (layer 0) at ``layer_decay ** num_layers`` of it.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if layer_decay is None:
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    if not hasattr(model, "group_matcher"):
        raise ValueError(f"layer-wise lr decay needs the model's group_matcher(); {type(model).__name__} has none")
    layers = layer_ids(model)
    num_layers = max(layers.values())
    groups: dict[tuple[int, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if param.ndim <= 1 or name in skip else weight_decay
        layer = layers[name]
        group = groups.setdefault(
            (layer, decay),
            {"params": [], "weight_decay": decay, "lr_scale": layer_decay ** (num_layers - layer), "layer": layer},
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]
