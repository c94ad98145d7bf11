"""What a bench record names: the machine and the commit; and the eager-vs-onnxruntime speed check of an export."""

from __future__ import annotations

import os
import statistics
import subprocess
from pathlib import Path

import torch
from torch import nn

from .._extras import cpu_isa, cpu_model
from ..deploy.fuse import fuse
from ..deploy.runtime import ExportedModel
from ..timing import time_interleaved


def device_name(device: str) -> str:
    """The GPU's name, or the CPU model with the instruction sets its int8/bf16 kernels use."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    isa = cpu_isa()
    return f"{cpu_model()} [{', '.join(isa)}]" if isa else cpu_model()


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def compare_onnx_speed(
    model: nn.Module, onnx_path: str | os.PathLike, batch: int = 1, seconds: float = 1.0, warmup: float = 0.2
) -> dict[str, float]:
    """Median latency (ms) of the fused eager model and of onnxruntime on ``onnx_path``, timed by
    :func:`time_interleaved`, both with ``torch.get_num_threads()`` intra-op threads."""
    fused = fuse(model).float()
    threads = torch.get_num_threads()
    exported = ExportedModel(onnx_path, threads=threads)
    x = torch.randn(batch, int(getattr(fused.config, "in_chans", 3)), *exported.metadata.img_size)
    with torch.inference_mode():
        times = time_interleaved({"eager_ms": lambda: fused(x), "onnxruntime_ms": lambda: exported(x)}, seconds, warmup)
    result = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    result["speedup"] = result["eager_ms"] / result["onnxruntime_ms"]
    result["threads"] = float(threads)
    return result
