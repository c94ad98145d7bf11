"""This core's measured multiply-accumulate peak in OpenVINO, per precision: the denominator of "share of peak".

A large matrix multiply (``[M, K] x [K, N]``, 1024 each: 1.07 G MACs a call) is compiled by OpenVINO's CPU plugin
as litevit's files are (one stream, the given threads) at f32, at bf16 (where the CPU computes it natively) and as
int8 (NNCF's post-training quantization of the same layer: int8 inputs and weights), and timed; the peak is the
median MAC rate. A model file's share of peak is its MACs per image x images/s over the peak of its precision
(int8 files: the int8 peak, though their float-kept layers run at the float rate).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._extras import has_native_bf16, quiet_nncf, require
from ..deploy.openvino import openvino_config
from ..timing import time_interleaved

SIDE = 1024  # M = K = N


@dataclass(frozen=True)
class Peak:
    """MACs per second (G) of a 1024^3 matmul in OpenVINO at each precision this CPU runs natively."""

    threads: int
    gmacs: dict[str, float]  # "f32", "bf16", "int8" -> G MAC/s (median)

    def of(self, precision: str) -> float | None:
        """The peak a file of ``precision`` (a route's: fp32, bf16, int8, int8-bf16) is held to."""
        key = "int8" if precision.startswith("int8") else "bf16" if precision == "bf16" else "f32"
        return self.gmacs.get(key)


def compiled_matmuls(threads: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """The matmul's input and its OpenVINO compiled models at f32, bf16 (native only) and int8."""
    ov = require("openvino", "the OpenVINO peak measurement")
    torch.manual_seed(0)
    layer = nn.Linear(SIDE, SIDE, bias=False).eval()
    x = torch.randn(SIDE, SIDE)
    fp32 = ov.convert_model(layer, example_input=x)
    core = ov.Core()
    compiled = {"f32": core.compile_model(fp32, "CPU", openvino_config(threads, "f32"))}
    if has_native_bf16():
        compiled["bf16"] = core.compile_model(fp32, "CPU", openvino_config(threads, "bf16"))
    nncf = require("nncf", "the OpenVINO int8 peak measurement")
    with quiet_nncf():
        int8 = nncf.quantize(fp32, nncf.Dataset([x.numpy()]), subset_size=1)
    compiled["int8"] = core.compile_model(int8, "CPU", openvino_config(threads, "f32"))
    return np.ascontiguousarray(x.numpy()), compiled


def openvino_peak(threads: int = 1, seconds: float = 2.0, warmup: float = 0.5) -> Peak:
    """The matmul's MAC rate at f32, bf16 (native only) and int8, timed interleaved with ``threads`` threads."""
    data, compiled = compiled_matmuls(threads)
    requests = {name: c.create_infer_request() for name, c in compiled.items()}
    calls = {name: (lambda r=r: r.infer({0: data}, share_inputs=True)) for name, r in requests.items()}
    times = time_interleaved(calls, seconds * len(calls), warmup)
    macs = SIDE**3
    return Peak(threads, {name: macs / statistics.median(t) / 1e9 for name, t in times.items()})
