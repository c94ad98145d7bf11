"""Parameter and multiply-accumulate counts (attention matmuls included).

Two conventions for MACs:

- ``"matmul"`` (the default): every matmul and convolution as executed, attention included; element-wise work
  (norms, activations, softmax, bias additions) is not counted.
- ``"cvnets"``: the accounting of ml-cvnets' profiler (``profile_module`` of each layer, summed by
  ``cvnets/misc/profiler.py::module_profile``), which produced the MobileViT v1/v2/v3 papers' and README's numbers.
  It differs from ``"matmul"`` in two places: ``MultiHeadAttention.profile_module`` counts QK^T and the weighted
  sum as ``seq_len * C * C`` each per sequence (C = embedding width over all heads) instead of the true
  ``seq_len**2 * C``; and a bias is one MAC per output element (``LinearLayer.profile_module`` counts its
  parameters, bias included, per token; ``ConvLayer.profile_module`` adds ``out_channels * H * W`` when it has a
  bias).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from .layers import to_2tuple

CONVENTIONS = ("matmul", "cvnets")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _CvnetsConvention(TorchFunctionMode):
    """Re-counts attention and biases the way ml-cvnets' profiler does, as FLOPs relative to ``counter``'s total."""

    def __init__(self, counter: FlopCounterMode) -> None:
        super().__init__()
        self.counter = counter
        self.adjustment = 0  # FLOPs (2 per MAC) to add to the counter's total

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query = args[0] if args else kwargs["query"]
            before = self.counter.get_total_flops()
            out = func(*args, **kwargs)
            # B, heads, N, c: QK^T and the weighted sum, each counted as N * C * C MACs per sequence, C = heads * c
            batch, heads, tokens, head_dim = query.shape
            self.adjustment += 2 * 2 * batch * tokens * (heads * head_dim) ** 2 - (
                self.counter.get_total_flops() - before
            )
            return out
        out = func(*args, **kwargs)
        if func in (F.linear, F.conv2d):
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if bias is not None:
                self.adjustment += 2 * out.numel()
        return out


@torch.no_grad()
def count_macs(model: nn.Module, img_size: int | tuple[int, int], in_chans: int = 3, convention: str = "matmul") -> int:
    """MACs of one image: FLOPs counted by torch's FlopCounterMode (matmuls, convs, attention) / 2.

    Attention runs under the math backend so that ``scaled_dot_product_attention`` is counted as the two
    matmuls it is. Element-wise work (norms, activations, softmax) is not counted, as in the papers.
    ``convention="cvnets"`` counts attention and biases as ml-cvnets' profiler does (see the module docstring);
    it is meant for the models whose papers were profiled with it (MobileViT v1/v2/v3).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    height, width = to_2tuple(img_size)
    param = next(model.parameters())
    x = torch.zeros(1, in_chans, height, width, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    adjustment = 0
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            if convention == "cvnets":
                with _CvnetsConvention(counter) as cvnets:
                    model(x)
                adjustment = cvnets.adjustment
            else:
                model(x)
    finally:
        model.train(was_training)
    return (counter.get_total_flops() + adjustment) // 2
