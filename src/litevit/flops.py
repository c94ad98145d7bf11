"""Parameter and multiply-accumulate counts (attention matmuls included)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, img_size: int | tuple[int, int], in_chans: int = 3) -> int:
    """MACs of one image: FLOPs counted by torch's FlopCounterMode (matmuls, convs, attention) / 2.

    Attention runs under the math backend so that ``scaled_dot_product_attention`` is counted as the two
    matmuls it is. Element-wise work (norms, activations, softmax) is not counted, as in the papers.
    """
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    param = next(model.parameters())
    x = torch.zeros(1, in_chans, height, width, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
