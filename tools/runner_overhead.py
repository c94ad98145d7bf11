"""What litevit's OpenVINO runner adds per call: it against a bare infer request and OpenVINO's ``benchmark_app``.

For each model and precision, a static batch-1 IR is written (``export --precision``, calibrated on noise for int8:
only speed is measured here) and timed three ways, 1 thread, one stream, at the precision the file records:

- litevit's runner (``ExportedModel``), as ``predict`` and the bench call it;
- a bare Python infer request on the same compiled model, input shared (``share_inputs=True``);
- ``benchmark_app -api sync -nthreads 1 -nstreams 1 -hint none`` on the same IR (its own process, median latency).

The first two are timed interleaved in this process; benchmark_app runs after them. One JSON line per IR:

    .venv/bin/python tools/runner_overhead.py levit_128s mobilevit_xxs >> benchmarks/speed/runner_overhead.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from _measuring import speed_file

import litevit
from litevit._extras import cpu_isa, cpu_model
from litevit.bench.timing import git_commit
from litevit.deploy.openvino import openvino_config
from litevit.deploy.runtime import ExportedModel
from litevit.timing import time_interleaved


def benchmark_app(path: Path, precision: str, seconds: int) -> float:
    """benchmark_app's median latency (ms) of ``path`` at batch 1, 1 thread, sync."""
    app = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    out = subprocess.run(
        [app, "-m", str(path), "-d", "CPU", "-api", "sync", "-nthreads", "1", "-nstreams", "1", "-hint", "none",
         "-infer_precision", precision, "-t", str(seconds)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return median_ms(out)


def median_ms(report: str) -> float:
    """The median latency (ms) in benchmark_app's report, which prints it in ms, or in us below 1 ms."""
    found = re.search(r"Median:\s+([\d.]+)\s*(ms|us)", report)
    if found is None:
        raise RuntimeError("benchmark_app printed no median latency: " + " | ".join(report.splitlines()[-5:]))
    return float(found.group(1)) / (1e3 if found.group(2) == "us" else 1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--precisions", nargs="+", default=["int8", "bf16"])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="litevit-overhead-"))
    try:
        for name in args.models:
            model = litevit.create_model(name)
            size = model.config.img_size
            for precision in args.precisions:
                path = speed_file(model, folder / f"{name}-{precision}.xml", precision, batch=1)
                hint = "bf16" if precision.endswith("bf16") else "f32"
                runner = ExportedModel(path, threads=1)
                x = torch.randn(1, 3, size, size)
                request = ov.Core().compile_model(str(path), "CPU", openvino_config(1, hint)).create_infer_request()
                data = np.ascontiguousarray(x.numpy())
                times = time_interleaved(
                    {"runner": lambda r=runner, x=x: r(x),
                     "bare": lambda r=request, d=data: r.infer({0: d}, share_inputs=True)},
                    args.seconds, warmup=1.0,
                )  # fmt: skip
                ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
                ratios = [a / b for a, b in zip(times["runner"], times["bare"], strict=True)]
                app = benchmark_app(path, hint, int(args.seconds))
                print(json.dumps({
                    "model": name, "precision": precision, "batch": 1, "threads": 1, "runner_ms": ms["runner"],
                    "bare_request_ms": ms["bare"], "benchmark_app_ms": app,
                    "runner_over_bare": statistics.median(ratios), "runner_over_benchmark_app": ms["runner"] / app,
                    "rounds": len(ratios), "cpu": cpu_model(), "isa": cpu_isa(), "openvino": ov.__version__,
                    "commit": git_commit(), "command": " ".join(sys.argv),
                }), flush=True)  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
