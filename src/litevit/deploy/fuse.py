"""``fuse(model)``: the inference form of a model, every BatchNorm folded and every constant precomputed."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class FuseError(RuntimeError):
    """A BatchNorm that the fuse step cannot fold into a neighbour."""


def _fuse_tree(module: nn.Module) -> nn.Module:
    # post-order: children first, so that a parent's fuse() sees already-fused children
    for name, child in list(module.named_children()):
        setattr(module, name, _fuse_tree(child))
    fuse = getattr(module, "fuse", None)
    return fuse() if callable(fuse) else module


def fuse(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm folded and inference-time constants precomputed.

    The original model is left untouched. Raises :class:`FuseError` naming any BatchNorm that remains.
    """
    fused = _fuse_tree(copy.deepcopy(model).eval())
    leftover = [name or "<model>" for name, m in fused.named_modules() if isinstance(m, _BatchNorm)]
    if leftover:
        raise FuseError(f"BatchNorm layers with no neighbour to fold into: {', '.join(leftover)}")
    return fused.eval()
