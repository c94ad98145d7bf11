"""What a bench record names (the machine and the commit), the FLOP rate a model reaches against a plain matmul, and
the eager-vs-onnxruntime speed check of an export."""

from __future__ import annotations

import os
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._extras import cpu_isa, cpu_model
from ..deploy.fuse import fuse
from ..deploy.runtime import ExportedModel
from ..flops import count_macs
from ..layers import to_2tuple
from ..timing import percentile, time_interleaved
from ..weights.loading import create_model


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


@dataclass
class FlopRate:
    """A model's achieved FLOP rate against the machine's float32 matmul rate, timed interleaved."""

    model: str
    batch_size: int
    threads: int
    model_gflops: float  # 2 * MACs * images/s of the fused eager model (median)
    matmul_gflops: float  # 2 n^3 / time of an n x n float32 matmul (median)
    ratio_median: float  # per interleaved round
    ratio_p10: float
    ratio_p90: float


def flop_rate(
    name: str = "levit_128s", batch_size: int = 16, threads: int = 1, seconds: float = 10.0, size: int = 1024
) -> FlopRate:
    """How close the fused model's eager forward comes to plain matmul throughput on this machine."""
    torch.set_num_threads(threads)
    model = fuse(create_model(name))
    height, width = to_2tuple(getattr(model.config, "img_size", 224))
    flops_per_image = 2 * count_macs(model, (height, width))
    x = torch.randn(batch_size, 3, height, width)
    a, b = torch.randn(size, size), torch.randn(size, size)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    times = time_interleaved({"model": forward, "matmul": lambda: torch.mm(a, b)}, seconds, warmup=1.0)
    model_rates = [flops_per_image * batch_size / t / 1e9 for t in times["model"]]
    matmul_rates = [2 * size**3 / t / 1e9 for t in times["matmul"]]
    ratios = [m / r for m, r in zip(model_rates, matmul_rates, strict=True)]
    return FlopRate(
        name, batch_size, threads, statistics.median(model_rates), statistics.median(matmul_rates),
        statistics.median(ratios), percentile(ratios, 0.1), percentile(ratios, 0.9),
    )  # fmt: skip
