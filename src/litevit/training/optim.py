"""Optimisation pieces: warm-up + cosine schedule, EMA of the weights, AdamW parameter groups."""

from __future__ import annotations

import copy
import math
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
            group["lr"] = lr
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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on 1-D parameters (biases, norms) and on ``model.no_weight_decay()``."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
