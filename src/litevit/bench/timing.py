"""Timing primitives: interleaved rounds, percentiles, the machine's name, the achieved FLOP rate."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._extras import cpu_isa, cpu_model
from ..deploy.fuse import fuse
from ..deploy.runtime import ExportedModel


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_interleaved(
    runners: dict[str, Callable[[], Any]], seconds: float, warmup: float, sync: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
    """Per-call times (s) of each runner, measured in interleaved rounds after a time-based warm-up."""
    for run in runners.values():
        start = time.perf_counter()
        while time.perf_counter() - start < warmup:
            run()
        sync()
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    deadline = time.perf_counter() + seconds
    round_index = 0
    while time.perf_counter() < deadline or round_index < 3:
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            runners[name]()
            sync()
            times[name].append(time.perf_counter() - start)
        round_index += 1
    return times


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
