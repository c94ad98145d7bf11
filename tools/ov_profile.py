"""Per-layer OpenVINO CPU time of litevit's fp32 IR against its int8 IR (the family's settings), 1 thread, static
shape, next to onnxruntime fp32's wall time: what bounds an int8 speed-up.

Usage: OMP_NUM_THREADS=1 python tools/ov_profile.py efficientvit_m0 [batch] [runs] [--precision bf16]
Prints, per graph: wall time per call (median), the sum of the last call's layer times as OpenVINO reports them
(wall minus that is per-call time outside the layers, roughly: OpenVINO's layer times are not exact and the
difference can come out negative), the share of each layer type (OpenVINO's node type and the kernel it ran:
``..._I8`` / ``..._i8`` int8, ``..._f32`` float). Output of the README's run: ``benchmarks/speed/ov_profile.txt``.
"""

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import openvino as ov
import torch

import litevit
from litevit.bench.run import model_input_size
from litevit.bench.runtimes import ONNX_OPSET
from litevit.bench.timing import device_name, git_commit
from litevit.deploy.exporting import export
from litevit.deploy.int8 import synthetic_calibration
from litevit.deploy.openvino import openvino_config
from litevit.deploy.runtime import ExportedModel


def wall_ms(run, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def profile(path: str, x: np.ndarray, runs: int, precision: str) -> tuple[float, float, list[tuple[str, float]]]:
    core = ov.Core()
    model = core.read_model(path)
    model.reshape(list(x.shape))
    config = {**openvino_config(1, precision), "PERF_COUNT": True}  # litevit's runner settings, per-layer counters
    request = core.compile_model(model, "CPU", config).create_infer_request()
    request.infer({0: x})  # warm-up
    wall = wall_ms(lambda: request.infer({0: x}), runs)
    per_kind: collections.Counter[str] = collections.Counter()
    for info in request.profiling_info:  # the last call's layers
        if info.status == info.Status.EXECUTED:
            per_kind[f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds() * 1e3
    total = sum(per_kind.values())
    return wall, total, [(kind, 100 * t / total) for kind, t in per_kind.most_common(12)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("batch", type=int, nargs="?", default=1)
    parser.add_argument("runs", type=int, nargs="?", default=200)
    parser.add_argument("--precision", choices=["f32", "bf16"], default="f32", help="OpenVINO inference precision")
    args = parser.parse_args()
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(
        f"# OMP_NUM_THREADS={threads} python tools/ov_profile.py {' '.join(sys.argv[1:])}; commit {git_commit()}; "
        f"{device_name('cpu')}; torch {torch.__version__}, openvino {ov.__version__}; "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    torch.set_num_threads(1)
    folder = tempfile.mkdtemp()
    model = litevit.create_model(args.name).eval()
    size = model_input_size(model)
    export(model, f"{folder}/fp32.onnx", opset=ONNX_OPSET)
    export(model, f"{folder}/fp32.xml")
    export(model, f"{folder}/int8.xml", int8=True, calibration=synthetic_calibration(*size), calibration_images=32)
    x = torch.randn(args.batch, 3, *size)
    onnx_fp32 = ExportedModel(f"{folder}/fp32.onnx", threads=1)
    print(f"{args.name} batch {args.batch}: onnxruntime fp32 {wall_ms(lambda: onnx_fp32(x), args.runs):.2f} ms/call")
    for label in ("fp32", "int8"):
        wall, layers, shares = profile(f"{folder}/{label}.xml", x.numpy(), args.runs, args.precision)
        print(f"OpenVINO {label} at {args.precision}: {wall:.2f} ms/call, layers {layers:.2f} ms "
              f"(wall - layers {wall - layers:.2f} ms); "
              + ", ".join(f"{kind} {share:.1f}%" for kind, share in shares))  # fmt: skip


if __name__ == "__main__":
    main()
